"""Every real suite's pipeline, end to end on CPU, scaled down: the suite file as shipped, with tiny local
stand-ins for what would come from the Hub (a word-level model of the suite's own family, GPT-NeoX for
Pythia, Qwen2 for Qwen2.5, GPT-2, built from the task's own data instead of the suite's model; a reward model
trained on the fixture pairs instead of the suite's; the hand-written fixture files in the dataset's real
schema instead of the Hub dataset). Everything else (task adapter, prompts, SFT, DPO, GRPO, PPO, the
evaluator, MLflow, the report) runs for real. Two suites also turn on what their GPU runs may use: LoRA in
every training (gsm8k, hh), and the instruct model's chat template (gsm8k: a ChatML stand-in).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import run_harness

pytestmark = pytest.mark.slow

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "tasks"

LORA_EVERYWHERE = ["lora.enabled=true", "lora.stages=[sft,dpo,grpo,ppo]", "lora.r=4", "lora.alpha=8"]

DATA = {
    "tldr-pythia-1b": [
        f"task.sft_path={FIXTURES / 'tldr' / 'sft'}", f"task.preference_path={FIXTURES / 'tldr' / 'preference'}",
        "model.architecture=gpt_neox",
    ],
    "hh-qwen2.5-0.5b": [f"task.path={FIXTURES / 'hh' / 'transcripts'}", "model.architecture=qwen2", *LORA_EVERYWHERE],
    "ultrafeedback-qwen2.5-0.5b": [f"task.path={FIXTURES / 'ultrafeedback' / 'trl'}", "model.architecture=qwen2"],
    "gsm8k-qwen2.5-0.5b": [
        f"task.path={FIXTURES / 'gsm8k'}", "model.architecture=qwen2", "model.chat_template=always", *LORA_EVERYWHERE,
    ],
    "imdb-gpt2": [f"task.path={FIXTURES / 'imdb'}", "model.architecture=gpt2"],
}

STAND_INS = [
    # The suites list every algorithm that makes sense for them; the end-to-end check of each suite's pipeline
    # runs three (one per kind of data: pairs, sampled groups, a critic), as tests/integration/test_tiny_suite.py
    # runs every algorithm.
    "only=[dpo,grpo,ppo]",
    # a tiny word-level GPT-2 instead of the suite's Hub model, and a reward model trained here
    "model.preset=tiny-gpt2", "model.max_positions=512", "reward_model.source=train", "reward_model.score_index=0",
    "sft.enabled=true", "sft.epochs=1", "sft.learning_rate=3e-3", "sft.batch_size=4",
    "reward_model.epochs=1", "reward_model.batch_size=4", "reward_model.learning_rate=1e-3",
    # CPU, one seed, a handful of rows and steps
    "precision=fp32", "device=cpu", "gradient_checkpointing=false", "checkpoint_every=0", "seeds=[0]",
    "task.num_sft_examples=6", "task.num_preference_pairs=6", "task.num_heldout_pairs=3",
    "task.num_train_prompts=4", "task.num_eval_prompts=3",
    "budget.policy=equal_prompts", "budget.prompts=4",
    "evaluation.generator=hf", "evaluation.num_prompts=3", "evaluation.samples_per_prompt=2",
    "evaluation.max_new_tokens=8", "sampling.max_new_tokens=8",
    "algorithms.dpo.batch_size=2", "algorithms.grpo.prompts_per_step=2", "algorithms.grpo.num_generations=2",
    "algorithms.ppo.rollouts_per_update=4", "algorithms.ppo.minibatch_size=2", "algorithms.ppo.micro_batch_size=2",
    "algorithms.ppo.rollout_batch_size=4",
]


@pytest.mark.parametrize("suite", sorted(DATA))
def test_real_suite_pipeline_runs_end_to_end_with_local_stand_ins(suite, tmp_path):
    import mlflow

    result = run_harness(tmp_path, *STAND_INS, *DATA[suite], suite=suite)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(f"harness/{suite}")
    cells = [r for r in client.search_runs([experiment.experiment_id]) if r.data.tags.get("harness.kind") == "cell"]
    assert sorted(r.data.tags["harness.algorithm"] for r in cells) == ["dpo", "grpo", "ppo", "sft"]
    assert all(r.info.status == "FINISHED" for r in cells)
    assert all("eval/proxy_reward" in r.data.metrics and "eval/kl" in r.data.metrics for r in cells)
    has_gold = suite.startswith("gsm8k")
    assert all(("eval/gold_reward" in r.data.metrics) == has_gold for r in cells)
    assert (tmp_path / "reports" / f"{suite}.md").is_file()

    suite_folder = tmp_path / "runs" / suite
    architecture = next(item.split("=")[1] for item in DATA[suite] if item.startswith("model.architecture="))
    assert json.loads((next(suite_folder.glob("prepare/base-*")) / "model" / "config.json").read_text())["model_type"] == architecture
    trained = [folder for folder in suite_folder.glob("cells/*/train/model")] + list(suite_folder.glob("prepare/sft-*/model"))
    assert len(trained) == 4  # dpo, grpo, ppo and SFT
    uses_lora = "lora.enabled=true" in DATA[suite]
    # LoRA: each training leaves its adapter beside the merged full model that everything downstream loads
    assert all((folder / "adapter" / "adapter_config.json").is_file() == uses_lora for folder in trained)
    samples = [json.loads(line) for line in next(suite_folder.glob("cells/sft-s0-*/eval/samples.jsonl")).read_text().splitlines()]
    assert all(sample["prompt"].startswith("<|im_start|>user\n") == suite.startswith("gsm8k") for sample in samples)
    report = (tmp_path / "reports" / f"{suite}.md").read_text()
    assert ("prompts: chat template" if suite.startswith("gsm8k") else "prompts: plain text") in report
    assert ("LoRA adapters (rank 4, alpha 8.0, modules all-linear) in sft, dpo, grpo, ppo" if uses_lora
            else "**Weights trained:** all (full fine-tuning)") in report
