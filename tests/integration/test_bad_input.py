"""The bad-input corpus: every malformed input is refused with one line naming the culprit, exit code 2,
and nothing half-made left behind (no incomplete stage folder, no MLflow run left RUNNING).

The CLI's `main()` runs in-process here (subprocess runs of the CLI are in test_cli.py): most cases are
refused before anything heavy is imported, and the few that fail while preparing data stay fast.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.cli import main

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "tasks"


def write(path: Path, text: str) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return str(path)


def corpus(tmp: Path) -> list[tuple[str, list[str], str]]:
    """(case, argv after `harness`, the text the one-line error must contain)."""
    not_a_model = tmp / "not-a-model"
    not_a_model.mkdir()
    pickled = tmp / "pickled-model"
    pickled.mkdir()
    (pickled / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    (pickled / "pytorch_model.bin").write_bytes(b"\x80\x04not really a pickle")
    a_file = tmp / "a-file"
    a_file.write_text("not a folder")
    bad_yaml = write(tmp / "bad.yaml", "task: {name: synthetic_reviews\nalgorithms: [\n")
    list_yaml = write(tmp / "list.yaml", "- just\n- a list\n")
    malformed_rows = write(
        tmp / "malformed-rows.yaml",
        "task:\n"
        "  name: tldr\n"
        f"  sft_path: {FIXTURES / 'tldr' / 'malformed.jsonl'}\n"
        f"  preference_path: {FIXTURES / 'tldr' / 'preference'}\n"
        "algorithms: {dpo: {}}\n",
    )
    without_template = tmp / "model-without-chat-template"
    _save_tiny_model(without_template)
    small = ["task.num_sft_examples=20", "task.num_preference_pairs=10", "task.num_heldout_pairs=5",
             "task.num_train_prompts=8", "task.num_eval_prompts=4", "seeds=[0]"]
    run = ["run", "suite=tiny"]
    return [
        ("unknown suite", ["run", "suite=tiny-typo"], "unknown suite 'tiny-typo'; did you mean 'tiny'?"),
        ("missing suite file", ["run", f"suite={tmp / 'nope.yaml'}"], "nope.yaml' does not exist"),
        ("no suite given", ["run"], "missing suite=NAME"),
        ("misspelled top-level key", [*run, "sed=[1]"], "unknown key 'sed'; did you mean 'seeds'?"),
        ("misspelled nested key", [*run, "evaluation.temprature=1.0"], "did you mean 'temperature'?"),
        ("misspelled algorithm key", [*run, "algorithms.grpo.num_generation=4"], "did you mean 'num_generations'?"),
        ("unknown algorithm", [*run, "algorithms.ddpo={}"], "unknown algorithm 'ddpo'; did you mean 'dpo'?"),
        ("unknown task", [*run, "task.name=gsm8"], "unknown task 'gsm8'; did you mean 'gsm8k'?"),
        ("unknown preset", [*run, "model.preset=tiny"], "unknown preset 'tiny'"),
        ("list given a word", [*run, "seeds=abc"], "bad value for 'seeds': expected a list"),
        ("float given a word", [*run, "algorithms.dpo.beta=high"], "bad value for 'algorithms.dpo.beta'"),
        ("int given a float", [*run, "sampling.max_new_tokens=1.5"], "bad value for 'sampling.max_new_tokens'"),
        ("bool given a word", [*run, "model.trust_remote_code=maybe"], "bad value for 'model.trust_remote_code'"),
        ("mapping given a scalar", [*run, "evaluation=fast"], "'evaluation' must be a mapping"),
        ("negative budget", [*run, "budget.prompts=-5"], "'budget.prompts' must be > 0"),
        ("zero samples", [*run, "evaluation.samples_per_prompt=0"], "'evaluation.samples_per_prompt' must be > 0"),
        ("zero batch", [*run, "algorithms.dpo.batch_size=0"], "'algorithms.dpo.batch_size' must be > 0"),
        ("DPO beta zero", [*run, "algorithms.dpo.beta=0"], "'algorithms.dpo.beta' must be > 0"),
        ("GRPO beta negative", [*run, "algorithms.grpo.beta=-0.5"], "'algorithms.grpo.beta' must be >= 0"),
        ("group of one", [*run, "algorithms.grpo.num_generations=1"], "'algorithms.grpo.num_generations' must be >= 2"),
        ("zero temperature", [*run, "sampling.temperature=0"], "'sampling.temperature' must be > 0"),
        ("top_p above one", [*run, "evaluation.top_p=1.5"], "'evaluation.top_p' must be in (0, 1]"),
        ("empty dataset", [*run, "task.num_sft_examples=0"], "'task.num_sft_examples' must be >= 1"),
        ("no seeds", [*run, "seeds=[]"], "'seeds' must list at least one seed"),
        ("repeated seed", [*run, "seeds=[2,2]"], "'seeds' must not repeat a seed"),
        ("only names a stranger", [*run, "only=[ppx]"], "'only' names 'ppx'"),
        ("override without '='", [*run, "fast"], "override 'fast' is not of the form key=value"),
        ("heads do not divide", [*run, "model.n_embd=31"], "'model.n_embd' must be divisible by model.n_head"),
        ("unknown model source", [*run, "model.source=s3"], "'model.source' must be one of build, path, hub"),
        ("fp16", [*run, "precision=fp16"], "'precision' must be fp32 or bf16"),
        ("unknown generator", [*run, "evaluation.generator=vlm"], "'evaluation.generator' must be one of hf, vllm, auto; did you mean 'vllm'?"),
        ("gold on a task without one", ["run", f"suite={malformed_rows}", "reward.source=gold"], "task 'tldr' has no gold reward"),
        ("tracking URI not a URI", [*run, "tracking.uri=mlflow.db"], "'tracking.uri' must be a URI"),
        ("checkpoint folder is not a model", [*run, "model.source=path", f"model.name_or_path={not_a_model}"],
         "is not a Hugging Face model folder (no config.json)"),
        ("pickled checkpoint only", [*run, "model.source=path", f"model.name_or_path={pickled}"],
         "has no .safetensors weights"),
        ("malformed suite YAML", ["run", f"suite={bad_yaml}"], "is not valid YAML"),
        ("suite YAML is a list", ["run", f"suite={list_yaml}"], "must hold a mapping"),
        ("unreachable tracking server", [*run, "tracking.uri=http://127.0.0.1:9", f"output_dir={tmp / 'out-unreachable'}"],
         "cannot use MLflow tracking URI 'http://127.0.0.1:9'"),
        ("read-only output folder (full disk)", [*run, "output_dir=/proc/harness-output"], "output_dir '/proc/harness-output' is not writable"),
        ("output folder is a file", [*run, f"output_dir={a_file}"], "is not a folder"),
        ("rows missing a column", ["run", f"suite={malformed_rows}", *small, f"output_dir={tmp / 'out-rows'}"],
         "malformed.jsonl row 3: missing column 'completion'"),
        ("prompt longer than the context", [*run, *small, "model.max_positions=8", "sampling.max_new_tokens=4",
                                            "evaluation.max_new_tokens=4", f"output_dir={tmp / 'out-long'}"],
         "exceeds the model's context of 8"),
        ("chat template mode as a YAML boolean", [*run, "model.chat_template=on"],
         "'model.chat_template' must be one of auto, always, never, got True (YAML reads on/off/yes/no as booleans)"),
        ("chat template required, model has none", [*run, *small, "model.source=path", f"model.name_or_path={without_template}",
                                                     "model.chat_template=always", f"output_dir={tmp / 'out-chat'}"],
         "'model.chat_template' is always, but the model's tokenizer has no chat template"),
        ("unknown model family", [*run, "model.architecture=gpt3"], "'model.architecture' must be one of gpt2, gpt_neox, qwen2, llama; did you mean 'gpt2'?"),
        ("LoRA on the reward model", [*run, "lora.stages=[reward_model]"], "'lora.stages' names 'reward_model'"),
        ("LoRA of rank zero", [*run, "lora.r=0"], "'lora.r' must be > 0"),
    ]


def _save_tiny_model(folder: Path) -> None:
    """A local model folder in the real format whose tokenizer has no chat template."""
    from harness.config import ModelConfig
    from harness.modeling import build_tiny_causal_lm, build_word_tokenizer, save_checkpoint
    from harness.tasks.synthetic import vocabulary

    tokenizer = build_word_tokenizer(vocabulary(), max_length=96)
    shape = ModelConfig(n_embd=32, n_layer=1, n_head=2, max_positions=96)
    save_checkpoint(build_tiny_causal_lm(shape, tokenizer, seed=0), tokenizer, folder)


def test_corpus_is_large_enough(tmp_path):
    assert len(corpus(tmp_path)) >= 30


@pytest.mark.parametrize("index", range(47))
def test_bad_input_is_refused_in_one_line_with_nothing_left_behind(index, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    cases = corpus(tmp_path)
    if index >= len(cases):
        pytest.skip("corpus shorter than the parameter range")
    case, argv, culprit = cases[index]
    capsys.readouterr()  # what building the corpus printed is not the CLI's
    code = main(argv)
    stderr = capsys.readouterr().err
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert code == 2, f"{case}: exit {code}, stderr {stderr!r}"
    assert len(lines) == 1, f"{case}: {stderr!r}"
    assert culprit in lines[0], f"{case}: {lines[0]!r}"
    assert_nothing_half_made(tmp_path)


def assert_nothing_half_made(root: Path) -> None:
    """No stage folder without its completion marker, and no MLflow run left RUNNING."""
    for prepare in root.rglob("prepare"):
        for stage in prepare.iterdir():
            assert (stage / "complete.json").is_file(), f"incomplete stage left behind: {stage}"
    assert not list(root.rglob("cells/*")), "a cell was started for bad input"
    for database in root.rglob("mlflow.db"):
        import mlflow

        client = mlflow.MlflowClient(f"sqlite:///{database}")
        for experiment in client.search_experiments():
            running = client.search_runs([experiment.experiment_id], filter_string="attributes.status = 'RUNNING'")
            assert not running, f"runs left RUNNING in {database}"


def test_a_second_run_of_the_same_suite_is_refused_while_the_first_holds_it(tmp_path, monkeypatch, capsys):
    """Two `harness run` on one suite and output folder would race on stage folders and MLflow cells: the
    second is refused at once, naming the first one's pid, and touches nothing."""
    import os

    from harness.runs import SuiteLock

    monkeypatch.chdir(tmp_path)
    suite_root = tmp_path / "runs" / "tiny"
    suite_root.mkdir(parents=True)
    with SuiteLock(suite_root):  # what a running `harness run` holds
        code = main(["run", "suite=tiny"])
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2
    assert len(lines) == 1 and f"another harness run (pid {os.getpid()}) is using" in lines[0]
    assert not (suite_root / "prepare").exists() and not (suite_root / "cells").exists()
    # Once the first run lets go, the lock can be taken again (a killed process releases it too).
    with SuiteLock(suite_root):
        pass
