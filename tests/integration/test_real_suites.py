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
import sys
import threading
from pathlib import Path

import pytest
from conftest import run_harness
from test_judge_backends import ChatServer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/judge_models.py
from judge_models import build_held_out_reward_model, build_varied_judge  # noqa: E402

pytestmark = pytest.mark.slow

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "tasks"

LORA_EVERYWHERE = ["lora.enabled=true", "lora.stages=[sft,dpo,grpo,ppo]", "lora.r=4", "lora.alpha=8"]

DATA = {
    "tldr-pythia-1b": [
        f"task.sft_path={FIXTURES / 'tldr' / 'sft'}",
        f"task.preference_path={FIXTURES / 'tldr' / 'preference'}",
        "model.architecture=gpt_neox",
    ],
    "hh-qwen2.5-0.5b": [f"task.path={FIXTURES / 'hh' / 'transcripts'}", "model.architecture=qwen2", *LORA_EVERYWHERE],
    "ultrafeedback-qwen2.5-0.5b": [f"task.path={FIXTURES / 'ultrafeedback' / 'trl'}", "model.architecture=qwen2"],
    "gsm8k-qwen2.5-0.5b": [
        f"task.path={FIXTURES / 'gsm8k'}",
        "model.architecture=qwen2",
        "model.chat_template=always",
        *LORA_EVERYWHERE,
    ],
    "imdb-gpt2": [f"task.path={FIXTURES / 'imdb'}", "model.architecture=gpt2"],
}

STAND_INS = [
    # The suites list every algorithm that makes sense for them; the end-to-end check of each suite's pipeline
    # runs three (one per kind of data: pairs, sampled groups, a critic), as tests/integration/test_tiny_suite.py
    # runs every algorithm.
    "only=[dpo,grpo,ppo]",
    # a tiny word-level GPT-2 instead of the suite's Hub model, and a reward model trained here
    "model.preset=tiny-gpt2",
    "model.max_positions=512",
    "reward_model.source=train",
    "reward_model.score_index=0",
    "sft.enabled=true",
    "sft.epochs=1",
    "sft.learning_rate=3e-3",
    "sft.batch_size=4",
    "reward_model.epochs=1",
    "reward_model.batch_size=4",
    "reward_model.learning_rate=1e-3",
    # CPU, one seed, a handful of rows and steps
    "precision=fp32",
    "device=cpu",
    "gradient_checkpointing=false",
    "checkpoint_every=0",
    "seeds=[0]",
    "task.num_sft_examples=6",
    "task.num_preference_pairs=6",
    "task.num_heldout_pairs=3",
    "task.num_train_prompts=4",
    "task.num_eval_prompts=3",
    "budget.policy=equal_prompts",
    "budget.prompts=4",
    "evaluation.generator=hf",
    "evaluation.num_prompts=3",
    "evaluation.samples_per_prompt=2",
    "evaluation.max_new_tokens=8",
    "sampling.max_new_tokens=8",
    "algorithms.dpo.batch_size=2",
    "algorithms.grpo.prompts_per_step=2",
    "algorithms.grpo.num_generations=2",
    "algorithms.ppo.rollouts_per_update=4",
    "algorithms.ppo.minibatch_size=2",
    "algorithms.ppo.micro_batch_size=2",
    "algorithms.ppo.rollout_batch_size=4",
]


# The suites' held-out gold reward models and judges, replaced by local stand-ins of the same kind: a tiny
# sequence classifier as the held-out RM; tldr's OpenAI judge by this test's own OpenAI-compatible server on
# loopback (the key in an environment variable), the vLLM judges of hh and ultrafeedback by a tiny causal LM with
# a chat template through transformers.
JUDGED_SUITES = ("tldr-pythia-1b", "hh-qwen2.5-0.5b", "ultrafeedback-qwen2.5-0.5b")
KEY_VARIABLE, KEY = "HARNESS_TEST_REAL_SUITE_JUDGE_KEY", "sk-real-suite-5d1e"


@pytest.fixture(scope="module")
def stand_ins(tmp_path_factory):
    root = tmp_path_factory.mktemp("stand_ins")
    judge = build_varied_judge(root / "judge")
    server = ChatServer(judge)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield {"judge": judge, "gold": build_held_out_reward_model(root / "gold"), "server": server}
    server.shutdown()
    server.server_close()


def _evaluator_stand_ins(suite: str, stand_ins, monkeypatch) -> list[str]:
    if suite not in JUDGED_SUITES:
        return []
    overrides = [f"gold.name_or_path={stand_ins['gold']}"]
    if suite == "tldr-pythia-1b":
        monkeypatch.setenv(KEY_VARIABLE, KEY)
        monkeypatch.setenv("NO_PROXY", "127.0.0.1")
        server = stand_ins["server"]
        return overrides + [
            f"judge.base_url=http://127.0.0.1:{server.server_address[1]}/v1",
            f"judge.api_key_env={KEY_VARIABLE}",
        ]
    return overrides + ["judge.backend=hf", f"judge.model={stand_ins['judge']}"]


@pytest.mark.parametrize("suite", sorted(DATA))
def test_real_suite_pipeline_runs_end_to_end_with_local_stand_ins(suite, tmp_path, stand_ins, monkeypatch):
    import mlflow

    evaluator = _evaluator_stand_ins(suite, stand_ins, monkeypatch)
    result = run_harness(tmp_path, *STAND_INS, *DATA[suite], *evaluator, suite=suite)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(f"harness/{suite}")
    cells = [r for r in client.search_runs([experiment.experiment_id]) if r.data.tags.get("harness.kind") == "cell"]
    assert sorted(r.data.tags["harness.algorithm"] for r in cells) == ["dpo", "grpo", "ppo", "sft"]
    assert all(r.info.status == "FINISHED" for r in cells)
    assert all("eval/proxy_reward" in r.data.metrics and "eval/kl" in r.data.metrics for r in cells)
    judged = suite in JUDGED_SUITES
    has_gold = suite.startswith("gsm8k") or judged  # the verifier, or the held-out RM stand-in
    assert all(("eval/gold_reward" in r.data.metrics) == has_gold for r in cells)
    assert (tmp_path / "reports" / f"{suite}.md").is_file()
    if judged:
        # Every cell judged against the references (the TL;DR anchor's number); the trained ones also against SFT.
        assert all(0 <= r.data.metrics["eval/judge_win_rate_vs_reference"] <= 1 for r in cells)
        assert all(
            ("eval/judge_win_rate_vs_sft" in r.data.metrics) == (r.data.tags["harness.algorithm"] != "sft")
            for r in cells
        )
        assert all(r.data.tags["harness.gold"] == f"held-out RM {stand_ins['gold']}" for r in cells)
        report = (tmp_path / "reports" / f"{suite}.md").read_text()
        assert f"**Gold reward:** held-out RM {stand_ins['gold']} — a reward model no algorithm trained on" in report
        assert "## Win rate against reference (judge) (`judge_win_rate_vs_reference`)" in report
    if suite == "tldr-pythia-1b":
        # The key went to the endpoint in its header and nowhere else: not in params, tags, logs or the report.
        assert any(request["authorization"] == f"Bearer {KEY}" for request in stand_ins["server"].requests)
        everything = json.dumps([(r.data.params, r.data.tags) for r in cells]) + result.stdout + result.stderr
        everything += (tmp_path / "reports" / f"{suite}.md").read_text()
        everything += "".join(path.read_text(errors="replace") for path in tmp_path.rglob("*.log"))
        assert KEY not in everything

    suite_folder = tmp_path / "runs" / suite
    architecture = next(item.split("=")[1] for item in DATA[suite] if item.startswith("model.architecture="))
    assert (
        json.loads((next(suite_folder.glob("prepare/base-*")) / "model" / "config.json").read_text())["model_type"]
        == architecture
    )
    trained = [folder for folder in suite_folder.glob("cells/*/train/model")] + list(
        suite_folder.glob("prepare/sft-*/model")
    )
    assert len(trained) == 4  # dpo, grpo, ppo and SFT
    uses_lora = "lora.enabled=true" in DATA[suite]
    # LoRA: each training leaves its adapter beside the merged full model that everything downstream loads
    assert all((folder / "adapter" / "adapter_config.json").is_file() == uses_lora for folder in trained)
    samples = [
        json.loads(line)
        for line in next(suite_folder.glob("cells/sft-s0-*/eval/samples.jsonl")).read_text().splitlines()
    ]
    assert all(sample["prompt"].startswith("<|im_start|>user\n") == suite.startswith("gsm8k") for sample in samples)
    report = (tmp_path / "reports" / f"{suite}.md").read_text()
    assert ("prompts: chat template" if suite.startswith("gsm8k") else "prompts: plain text") in report
    assert (
        "LoRA adapters (rank 4, alpha 8.0, modules all-linear) in sft, dpo, grpo, ppo"
        if uses_lora
        else "**Weights trained:** all (full fine-tuning)"
    ) in report
