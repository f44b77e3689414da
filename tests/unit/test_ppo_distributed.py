"""One PPO update on two gloo CPU processes equals the one-process update of the same rollouts (PPO.md §2.7,
§2.8, §2.13; DESIGN.md §9 "our PPO shards rollouts by rank and reduces every count and statistic").

The oracle is the same update computed by one process on the whole batch: `ppo.learn_from_rollouts` (the
function `ppo.train` calls once per update) on a fixed batch of B = 8 rollouts, M = 1 minibatch, K = 2 epochs,
micro-batches of 2 (so each rank accumulates over two micro-batches under `no_sync`). The rollouts are built
deterministically, not sampled, so both runs see the same batch: rank r takes rows r*4..r*4+3
(`onpolicy.shard_rows`, as `train` does with its prompts), and the first four rows have long responses and the
last four short ones, so the ranks hold different numbers of valid tokens and a per-rank token count, per-rank
whitening or a missing undo of DDP's gradient average changes the result.

This file is also the worker: `accelerate launch --config_file configs/accelerate/ddp.yaml --num_processes 2
tests/unit/test_ppo_distributed.py` runs `main()` on each rank. The worker also runs a control update with the
cross-rank sums switched off (`onpolicy.reduce_sum` replaced by the identity, i.e. per-rank token counts and
moments), and the test checks that this control is far from the oracle: the comparison can fail.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from contexts import unit_context

WORDS = ["a", "b", "c", "d", "e", "f", "g", "h", "good", "x", "y", "z", "q"]
ROLLOUTS = 8  # B, global
MAX_NEW_TOKENS = 8
WORLD_SIZE = 2
DDP_PRESET = Path(__file__).resolve().parents[2] / "configs" / "accelerate" / "ddp.yaml"


def ppo_config():
    from harness.algorithms import ppo

    return ppo.Config(
        rollouts_per_update=ROLLOUTS,
        minibatch_size=ROLLOUTS,  # M = 1: the permutation of the rows cannot change the step
        micro_batch_size=2,  # per device: two micro-batches per rank, gradients accumulated under no_sync
        rollout_batch_size=4,
        ppo_epochs=2,  # the second step sees ratios != 1, so clipping statistics are not trivial
        learning_rate=1e-3,
        critic_learning_rate=1e-3,
        lr_scheduler="constant",
        max_grad_norm=1e6,  # no clipping: a wrong gradient scale would otherwise be hidden by the clip
        kl_coef=0.05,
        entropy_coef=0.01,  # the entropy bonus path is normalised by the token count too
    )


def build_models(root: Path) -> None:
    """A tiny GPT-2 policy over a word vocabulary and a reward model (same backbone, fresh scalar head)."""
    import torch
    from transformers import AutoModelForSequenceClassification

    from harness.config import ModelConfig
    from harness.modeling import build_tiny_causal_lm, build_word_tokenizer, save_checkpoint

    tokenizer = build_word_tokenizer(WORDS, max_length=64)
    tiny = ModelConfig(n_embd=32, n_layer=2, n_head=4, max_positions=64)
    save_checkpoint(build_tiny_causal_lm(tiny, tokenizer, seed=0), tokenizer, root / "base")
    torch.manual_seed(0)
    reward_model = AutoModelForSequenceClassification.from_pretrained(root / "base", num_labels=1)
    save_checkpoint(reward_model, tokenizer, root / "reward_model")


def make_context(root: Path, output_dir: Path):

    return unit_context(
        "ppo",
        ppo_config(),
        base_dir=root / "base",
        reward_model_dir=root / "reward_model",
        output_dir=output_dir,
        prompts_budget=ROLLOUTS,
        max_new_tokens=MAX_NEW_TOKENS,
    )


def fixed_rollouts(tokenizer, rank: int, world_size: int, device):
    """This rank's slice of a fixed global batch: prompts, responses (some stopped by EOS, some truncated at
    max length) and sequence scores; the first half has 6-8 response tokens, the second half 1-3."""
    import torch

    from harness.algorithms import onpolicy, ppo_math

    rng = random.Random(0)
    prompts = [" ".join(rng.choice(WORDS[:8]) for _ in range(rng.randint(2, 4))) for _ in range(ROLLOUTS)]
    generator = torch.Generator().manual_seed(0)
    word_ids = [tokenizer.convert_tokens_to_ids(word) for word in WORDS]
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    responses = torch.full((ROLLOUTS, MAX_NEW_TOKENS), pad, dtype=torch.long)
    for row in range(ROLLOUTS):
        length = rng.randint(6, 8) if row < ROLLOUTS // 2 else rng.randint(1, 3)
        picks = torch.randint(len(word_ids), (length,), generator=generator).tolist()
        responses[row, :length] = torch.tensor([word_ids[pick] for pick in picks])
        if length < MAX_NEW_TOKENS and row % 3 != 0:  # most rows stop with EOS; a few run on as if truncated
            responses[row, length - 1] = eos
    scores = torch.randn(ROLLOUTS, generator=generator)

    rows = onpolicy.shard_rows(list(range(ROLLOUTS)), rank, world_size)
    prompt_ids, prompt_mask, prompt_starts = onpolicy.encode_prompts(tokenizer, [prompts[i] for i in rows], device)
    truncated = ppo_math.truncate_after_stop(responses[rows].to(device), [eos], pad)
    rollouts = onpolicy.Rollouts.from_truncated(prompt_ids, prompt_mask.bool(), prompt_starts, truncated)
    return rollouts, scores[rows].to(device)


def one_update(root: Path, output_dir: Path) -> dict:
    """Build the learner from disk and run one PPO update on this rank's fixed rollouts (the product path)."""
    import torch

    from harness.algorithms import onpolicy, ppo
    from harness.modeling import load_tokenizer

    context = make_context(root, output_dir)
    config = context.config
    accelerator = onpolicy.make_accelerator(context.suite, "PPO")
    tokenizer = load_tokenizer(context.base_dir)
    learner = ppo.build_learner(context, tokenizer, accelerator)
    rollouts, scores = fixed_rollouts(
        tokenizer, accelerator.process_index, accelerator.num_processes, accelerator.device
    )
    settings = onpolicy.LossSettings(1.0, config.clip_epsilon, config.value_clip, config.entropy_coef)
    metrics = ppo.learn_from_rollouts(
        learner,
        rollouts,
        scores,
        config.kl_coef,
        settings,
        config,
        onpolicy.local_minibatch_size(config, accelerator.num_processes, "ppo"),
        torch.Generator().manual_seed(1),
    )
    tensors = {}
    for name, model in (("policy", learner.policy), ("critic", learner.critic)):
        for key, parameter in accelerator.unwrap_model(model).named_parameters():
            tensors[f"{name}.{key}"] = parameter.detach().clone()
            if parameter.grad is not None:  # the last minibatch's all-reduced gradient, left after the step
                tensors[f"{name}_grad.{key}"] = parameter.grad.detach().clone()
    return {"metrics": metrics, "tensors": tensors}


def main() -> None:
    """The worker of one rank under `accelerate launch`: the real update, then the control without reductions."""
    import torch
    from accelerate import PartialState
    from safetensors.torch import save_file

    from harness.algorithms import onpolicy

    parser = argparse.ArgumentParser()
    parser.add_argument("--models", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    arguments = parser.parse_args()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    results = {"reduced": one_update(arguments.models, arguments.out)}
    rank = PartialState().process_index  # after make_accelerator has joined the gloo group (cpu=True)
    onpolicy.reduce_sum = lambda tensor, accelerator: tensor  # the control: per-rank counts, moments and sums
    results["per_rank"] = one_update(arguments.models, arguments.out)
    for name, result in results.items():
        save_file(result["tensors"], str(arguments.out / f"{name}-rank{rank}.safetensors"))
        (arguments.out / f"{name}-rank{rank}.json").write_text(json.dumps(result["metrics"]))


# ---------------------------------------------------------------------------------------------------------
# The test
# ---------------------------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as handle:
        handle.bind(("127.0.0.1", 0))
        return handle.getsockname()[1]


def _max_difference(left: dict, right: dict, prefix: str) -> float:
    keys = sorted(key for key in left if key.startswith(prefix + "."))
    assert keys and keys == sorted(key for key in right if key.startswith(prefix + "."))
    return max(float((left[key] - right[key]).abs().max()) for key in keys)


@pytest.mark.slow
def test_two_process_update_equals_one_process_update(tmp_path):
    import torch
    from safetensors.torch import load_file

    build_models(tmp_path)
    output = tmp_path / "out"
    output.mkdir()
    # The harness's DDP preset without `--cpu`: Accelerate 1.15's `launch --cpu` starts a single process
    # whatever `--num_processes` says (its simple launcher; several CPU processes need mpirun), while the DDP
    # preset starts them with torchrun. Each rank then asks for the CPU itself (`onpolicy.make_accelerator`, from
    # suite.device), which makes Accelerate join a gloo process group.
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(DDP_PRESET),
        "--num_processes",
        str(WORLD_SIZE),
        "--main_process_port",
        str(_free_port()),
        __file__,
        "--models",
        str(tmp_path),
        "--out",
        str(output),
    ]
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    started = time.perf_counter()
    finished = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr[-4000:]
    launch_seconds = time.perf_counter() - started

    # The oracle: the same update by one process on all B rollouts.
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    try:
        oracle = one_update(tmp_path, output)
    finally:
        torch.use_deterministic_algorithms(deterministic)
        torch.set_num_threads(threads)
    expected_tensors, expected_metrics = oracle["tensors"], oracle["metrics"]

    reduced = [load_file(str(output / f"reduced-rank{rank}.safetensors")) for rank in range(WORLD_SIZE)]
    per_rank = load_file(str(output / "per_rank-rank0.safetensors"))
    differences = {
        part: max(_max_difference(tensors, expected_tensors, part) for tensors in reduced)
        for part in ("policy", "critic", "policy_grad", "critic_grad")
    }
    control = {part: _max_difference(per_rank, expected_tensors, part) for part in differences}
    print(
        f"launch {launch_seconds:.1f}s; max |difference| two-process vs one-process {differences}; "
        f"control without cross-rank sums {control}"
    )
    # Weights after two AdamW steps of lr 1e-3 and the last step's gradients: float32 summation order only.
    # Measured: weights 1.4e-7 (policy) and 1.0e-7 (critic), gradients 7e-8 and 4e-8.
    for part, difference in differences.items():
        assert difference < 2e-6, (part, difference)
    # The control moves the weights by about lr (AdamW steps are about lr per element) and changes the gradients
    # by a large fraction of their size: far outside the tolerance above. Measured: weights 4e-3, gradients
    # 0.35 and 0.25. (Dividing by the per-rank token count alone, the rest reduced, moves the policy by 4e-3.)
    assert control["policy"] > 1e-4 and control["critic"] > 1e-4, control
    assert control["policy_grad"] > 1e-3 and control["critic_grad"] > 1e-3, control

    # Every logged statistic is global: each rank returns the one-process value (timings excepted).
    compared = 0
    for rank in range(WORLD_SIZE):
        metrics = json.loads((output / f"reduced-rank{rank}.json").read_text())
        assert set(metrics) == set(expected_metrics)
        for name, value in expected_metrics.items():
            if name.startswith("ppo/seconds_"):
                continue
            assert metrics[name] == pytest.approx(value, rel=1e-5, abs=1e-6), name
            compared += 1
    assert compared > 2 * 25
    # The spend count is the whole batch's response tokens, not one rank's.
    from harness.modeling import load_tokenizer

    whole_batch, _ = fixed_rollouts(load_tokenizer(tmp_path / "base"), 0, 1, "cpu")
    assert metrics["_tokens"] == expected_metrics["_tokens"] == float(whole_batch.response_lengths.sum())
    control_metrics = json.loads((output / "per_rank-rank0.json").read_text())
    assert control_metrics["ppo/policy_loss"] != pytest.approx(expected_metrics["ppo/policy_loss"], rel=1e-3)


if __name__ == "__main__":
    main()
