"""One PPO update against one GRPO update: wall time per generated token and peak memory, as ratios.

    .venv/bin/python benchmarks/ppo_vs_grpo.py [--threads N]

Both train the same tiny GPT-2 (the `tiny` suite's model shape, built from the embedded task's vocabulary),
score with the same reward model, sample with the suite's shared settings, and generate the same number of
completions per update: PPO 64 rollouts of one completion, GRPO 8 prompts x 8 completions. Each algorithm
runs in its own process (so peak resident memory is its own) twice, for 2 and for 6 updates; the difference
cancels model loading and trainer set-up, leaving the marginal cost of an update.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

COMPLETIONS_PER_UPDATE = 64


def prepare(folder: Path) -> None:
    """Task data, a base model and a reward model initialised from it, written once for both algorithms."""
    from transformers import AutoModelForSequenceClassification

    from harness.config import load_config
    from harness.modeling import build_tiny_causal_lm, build_word_tokenizer, save_checkpoint
    from harness.tasks import synthetic
    from harness.tasks.common import save_task_data

    config = load_config("tiny")
    save_task_data(synthetic.build_task_data(config.task, 0), folder / "data.json")
    tokenizer = build_word_tokenizer(synthetic.vocabulary(), config.suite.model.max_positions)
    save_checkpoint(build_tiny_causal_lm(config.suite.model, tokenizer, 0), tokenizer, folder / "base")
    reward_model = AutoModelForSequenceClassification.from_pretrained(folder / "base", num_labels=1)
    reward_model.config.pad_token_id = tokenizer.pad_token_id
    save_checkpoint(reward_model, tokenizer, folder / "reward_model")


def measure(algorithm: str, updates: int, folder: Path) -> dict:
    """Train `updates` updates of `algorithm` in this process; seconds, generated tokens, peak RSS."""
    from harness.algorithms import spec
    from harness.algorithms.context import TrainContext
    from harness.config import load_config
    from harness.rewards import training_reward_function
    from harness.tasks import synthetic
    from harness.tasks.common import load_task_data

    per_update = {"ppo": f"budget.prompts={COMPLETIONS_PER_UPDATE * updates}", "grpo": f"budget.prompts={8 * updates}"}
    config = load_config(
        "tiny",
        [
            per_update[algorithm],
            "algorithms.grpo.prompts_per_step=8",
            "algorithms.grpo.num_generations=8",
            f"algorithms.ppo.rollouts_per_update={COMPLETIONS_PER_UPDATE}",
        ],
    )
    output = folder / f"{algorithm}-{updates}"
    context = TrainContext(
        algorithm=algorithm,
        config=config.algorithms[algorithm],
        suite=config.suite,
        seed=0,
        base_dir=folder / "base",
        reward_model_dir=folder / "reward_model",
        task_data=load_task_data(folder / "data.json"),
        reward_function=training_reward_function("proxy", 1.0, synthetic, folder / "reward_model", "cpu"),
        output_dir=output,
        log_metrics=lambda step, metrics: None,
    )
    started = time.perf_counter()
    result = spec.algorithm(algorithm).train(context)
    seconds = time.perf_counter() - started
    return {
        "seconds": seconds,
        "tokens": result.spend["tokens_generated"],
        "completions": result.spend["completions_generated"],
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def in_subprocess(algorithm: str, updates: int, folder: Path, threads: int) -> dict:
    code = (
        "import json, sys, torch; from pathlib import Path; "
        f"torch.set_num_threads({threads}); "
        "sys.path.insert(0, 'benchmarks'); from ppo_vs_grpo import measure; "
        f"print('RESULT=' + json.dumps(measure({algorithm!r}, {updates}, Path({str(folder)!r}))))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    line = [text for text in result.stdout.splitlines() if text.startswith("RESULT=")]
    if result.returncode != 0 or not line:
        sys.exit(f"{algorithm} failed:\n{result.stderr[-3000:]}")
    return json.loads(line[0][len("RESULT=") :])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process (same for both)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as temporary:
        folder = Path(temporary)
        prepare(folder)
        rows = {}
        for algorithm in ("grpo", "ppo"):
            short, long = (
                in_subprocess(algorithm, 2, folder, args.threads),
                in_subprocess(algorithm, 6, folder, args.threads),
            )
            marginal_seconds = long["seconds"] - short["seconds"]
            marginal_tokens = long["tokens"] - short["tokens"]
            rows[algorithm] = {
                "seconds_per_update": marginal_seconds / 4,
                "ms_per_generated_token": 1000 * marginal_seconds / marginal_tokens,
                "completions_per_update": (long["completions"] - short["completions"]) / 4,
                "peak_rss_mb": long["peak_rss_mb"],
            }
    print(f"{'':<6} {'s/update':>9} {'ms/token':>9} {'completions/update':>19} {'peak RSS MB':>12}")
    for algorithm, row in rows.items():
        print(
            f"{algorithm:<6} {row['seconds_per_update']:9.2f} {row['ms_per_generated_token']:9.3f} "
            f"{row['completions_per_update']:19.0f} {row['peak_rss_mb']:12.0f}"
        )
    ppo, grpo = rows["ppo"], rows["grpo"]
    print(f"PPO / GRPO time per generated token: {ppo['ms_per_generated_token'] / grpo['ms_per_generated_token']:.2f}x")
    print(f"PPO / GRPO peak resident memory:     {ppo['peak_rss_mb'] / grpo['peak_rss_mb']:.2f}x")


if __name__ == "__main__":
    main()
