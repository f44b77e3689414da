"""The bad-input corpus: every malformed input is refused with one line naming the culprit, exit code 2,
and nothing half-made left behind (no incomplete stage folder, no MLflow run left RUNNING).

The CLI's `main()` runs in-process here (subprocess runs of the CLI are in test_cli.py): most cases are
refused before anything heavy is imported, and the few that fail while preparing data stay fast.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from harness.cli import main

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "tasks"


def write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    return path


def _model_folder_with_pickle_only(folder: Path) -> Path:
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    (folder / "pytorch_model.bin").write_bytes(b"\x80\x04not really a pickle")
    return folder


MINIMAL_SUITE = "task: {name: synthetic_reviews}\nalgorithms: {dpo: {}}\n"

# Files and folders a case refers to as <<name>> in its argv, made only for the cases that use them.
FIXTURES_FOR_CASES = {
    "tmp": lambda tmp: tmp,
    "not_a_model": lambda tmp: (tmp / "not-a-model").mkdir() or tmp / "not-a-model",
    "pickled": lambda tmp: _model_folder_with_pickle_only(tmp / "pickled-model"),
    "a_file": lambda tmp: write(tmp / "a-file", "not a folder"),
    "a_folder_yaml": lambda tmp: (tmp / "folder.yaml").mkdir() or tmp / "folder.yaml",
    "bad_yaml": lambda tmp: write(tmp / "bad.yaml", "task: {name: synthetic_reviews\nalgorithms: [\n"),
    "list_yaml": lambda tmp: write(tmp / "list.yaml", "- just\n- a list\n"),
    "latin1_yaml": lambda tmp: write(tmp / "latin1.yaml", (MINIMAL_SUITE + "description: caf\xe9\n").encode("latin-1")),
    "nul_yaml": lambda tmp: write(tmp / "nul.yaml", MINIMAL_SUITE.encode() + b"\x00\x01\n"),
    "twice_yaml": lambda tmp: write(tmp / "twice.yaml", MINIMAL_SUITE + "seeds: [0]\nseeds: [1]\n"),
    "only_empty_yaml": lambda tmp: write(tmp / "only-empty.yaml", MINIMAL_SUITE + "only: []\n"),
    "nan_yaml": lambda tmp: write(
        tmp / "nan.yaml", "task: {name: synthetic_reviews}\nalgorithms: {dpo: {beta: .nan}}\n"
    ),
    "malformed_rows": lambda tmp: write(
        tmp / "malformed-rows.yaml",
        "task:\n"
        "  name: tldr\n"
        f"  sft_path: {FIXTURES / 'tldr' / 'malformed.jsonl'}\n"
        f"  preference_path: {FIXTURES / 'tldr' / 'preference'}\n"
        "algorithms: {dpo: {}}\n",
    ),
    "without_template": lambda tmp: (
        _save_tiny_model(tmp / "model-without-chat-template") or tmp / "model-without-chat-template"
    ),
}

SMALL = [
    "task.num_sft_examples=20",
    "task.num_preference_pairs=10",
    "task.num_heldout_pairs=5",
    "task.num_train_prompts=8",
    "task.num_eval_prompts=4",
    "seeds=[0]",
]
RUN = ["run", "suite=tiny"]
HUGE = "x" * 100_000  # a value pasted by mistake (a file's contents, a log): named, never echoed back

# (case, argv after `harness`, the text the one-line error must contain). Add a case by adding a line: every
# case is its own test, and nothing counts them.
CASES: list[tuple[str, list[str], str]] = [
    ("unknown suite", ["run", "suite=tiny-typo"], "unknown suite 'tiny-typo'; did you mean 'tiny'?"),
    ("missing suite file", ["run", "suite=<<tmp>>/nope.yaml"], "nope.yaml' does not exist"),
    ("no suite given", ["run"], "missing suite=NAME"),
    ("misspelled top-level key", [*RUN, "sed=[1]"], "unknown key 'sed'; did you mean 'seeds'?"),
    ("misspelled nested key", [*RUN, "evaluation.temprature=1.0"], "did you mean 'temperature'?"),
    ("misspelled algorithm key", [*RUN, "algorithms.grpo.num_generation=4"], "did you mean 'num_generations'?"),
    ("unknown algorithm", [*RUN, "algorithms.ddpo={}"], "unknown algorithm 'ddpo'; did you mean 'dpo'?"),
    ("unknown task", [*RUN, "task.name=gsm8"], "unknown task 'gsm8'; did you mean 'gsm8k'?"),
    ("unknown preset", [*RUN, "model.preset=tiny"], "unknown preset 'tiny'"),
    ("list given a word", [*RUN, "seeds=abc"], "bad value for 'seeds': expected a list"),
    ("float given a word", [*RUN, "algorithms.dpo.beta=high"], "bad value for 'algorithms.dpo.beta'"),
    ("int given a float", [*RUN, "sampling.max_new_tokens=1.5"], "bad value for 'sampling.max_new_tokens'"),
    ("bool given a word", [*RUN, "model.trust_remote_code=maybe"], "bad value for 'model.trust_remote_code'"),
    ("mapping given a scalar", [*RUN, "evaluation=fast"], "'evaluation' must be a mapping"),
    ("negative budget", [*RUN, "budget.prompts=-5"], "'budget.prompts' must be > 0"),
    ("zero samples", [*RUN, "evaluation.samples_per_prompt=0"], "'evaluation.samples_per_prompt' must be > 0"),
    ("zero batch", [*RUN, "algorithms.dpo.batch_size=0"], "'algorithms.dpo.batch_size' must be > 0"),
    ("DPO beta zero", [*RUN, "algorithms.dpo.beta=0"], "'algorithms.dpo.beta' must be > 0"),
    ("GRPO beta negative", [*RUN, "algorithms.grpo.beta=-0.5"], "'algorithms.grpo.beta' must be >= 0"),
    ("group of one", [*RUN, "algorithms.grpo.num_generations=1"], "'algorithms.grpo.num_generations' must be >= 2"),
    ("zero temperature", [*RUN, "sampling.temperature=0"], "'sampling.temperature' must be > 0"),
    ("top_p above one", [*RUN, "evaluation.top_p=1.5"], "'evaluation.top_p' must be in (0, 1]"),
    ("empty dataset", [*RUN, "task.num_sft_examples=0"], "'task.num_sft_examples' must be >= 1"),
    ("no seeds", [*RUN, "seeds=[]"], "'seeds' must list at least one seed"),
    ("repeated seed", [*RUN, "seeds=[2,2]"], "'seeds' must not repeat a seed"),
    ("only names a stranger", [*RUN, "only=[ppx]"], "'only' names 'ppx'"),
    ("override without '='", [*RUN, "fast"], "override 'fast' is not of the form key=value"),
    ("heads do not divide", [*RUN, "model.n_embd=31"], "'model.n_embd' must be divisible by model.n_head"),
    ("unknown model source", [*RUN, "model.source=s3"], "'model.source' must be one of build, path, hub"),
    ("fp16", [*RUN, "precision=fp16"], "'precision' must be fp32 or bf16"),
    (
        "unknown generator",
        [*RUN, "evaluation.generator=vlm"],
        "'evaluation.generator' must be one of hf, vllm, auto; did you mean 'vllm'?",
    ),
    (
        "gold on a task without one",
        ["run", "suite=<<malformed_rows>>", "reward.source=gold"],
        "task 'tldr' has no gold reward",
    ),
    ("tracking URI not a URI", [*RUN, "tracking.uri=mlflow.db"], "'tracking.uri' must be a URI"),
    (
        "checkpoint folder is not a model",
        [*RUN, "model.source=path", "model.name_or_path=<<not_a_model>>"],
        "is not a Hugging Face model folder (no config.json)",
    ),
    (
        "pickled checkpoint only",
        [*RUN, "model.source=path", "model.name_or_path=<<pickled>>"],
        "has no .safetensors weights",
    ),
    ("malformed suite YAML", ["run", "suite=<<bad_yaml>>"], "is not valid YAML"),
    ("suite YAML is a list", ["run", "suite=<<list_yaml>>"], "must hold a mapping"),
    (
        "unreachable tracking server",
        [*RUN, "tracking.uri=http://127.0.0.1:9", "output_dir=<<tmp>>/out-unreachable"],
        "cannot use MLflow tracking URI 'http://127.0.0.1:9'",
    ),
    (
        "read-only output folder (full disk)",
        [*RUN, "output_dir=/proc/harness-output"],
        "output_dir '/proc/harness-output' is not writable",
    ),
    ("output folder is a file", [*RUN, "output_dir=<<a_file>>"], "is not a folder"),
    (
        "rows missing a column",
        ["run", "suite=<<malformed_rows>>", *SMALL, "output_dir=<<tmp>>/out-rows"],
        "malformed.jsonl row 3: missing column 'completion'",
    ),
    (
        "prompt longer than the context",
        [
            *RUN,
            *SMALL,
            "model.max_positions=8",
            "sampling.max_new_tokens=4",
            "evaluation.max_new_tokens=4",
            "output_dir=<<tmp>>/out-long",
        ],
        "exceeds the model's context of 8",
    ),
    (
        "chat template mode as a YAML boolean",
        [*RUN, "model.chat_template=on"],
        "'model.chat_template' must be one of auto, always, never, got True (YAML reads on/off/yes/no as booleans)",
    ),
    (
        "chat template required, model has none",
        [
            *RUN,
            *SMALL,
            "model.source=path",
            "model.name_or_path=<<without_template>>",
            "model.chat_template=always",
            "output_dir=<<tmp>>/out-chat",
        ],
        "'model.chat_template' is always, but the model's tokenizer has no chat template",
    ),
    (
        "unknown model family",
        [*RUN, "model.architecture=gpt3"],
        "'model.architecture' must be one of gpt2, gpt_neox, qwen2, llama; did you mean 'gpt2'?",
    ),
    ("LoRA on the reward model", [*RUN, "lora.stages=[reward_model]"], "'lora.stages' names 'reward_model'"),
    ("LoRA of rank zero", [*RUN, "lora.r=0"], "'lora.r' must be > 0"),
    # Issue 15: the four that got through a new user's corpus.
    (
        "tracking store MLflow cannot use",
        [*RUN, "tracking.uri=ftp://nowhere"],
        "'tracking.uri' has scheme 'ftp', which MLflow cannot keep runs in",
    ),
    (
        "infinite KL coefficient",
        [*RUN, "algorithms.ppo.kl_coef=inf"],
        "'algorithms.ppo.kl_coef' must be a finite number, not inf",
    ),
    (
        "empty only",
        [*RUN, "only=[]"],
        "'only' is empty: name at least one algorithm of suite 'tiny' (dpo, ipo, simpo, kto, online_dpo, grpo, dr_grpo, dapo, gspo, rloo, reinforce_pp, ppo, best_of_n), or leave it out",
    ),
    ("100 kB value", [*RUN, f"algorithms.dpo.beta={HUGE}"], "bad value for 'algorithms.dpo.beta': Value 'xxxxxxxx"),
    # Issue 15: a new corpus, tried before it was added (what each gave before is in the closing note).
    ("empty only in a suite file", ["run", "suite=<<only_empty_yaml>>"], "'only' is empty"),
    ("NaN in a suite file", ["run", "suite=<<nan_yaml>>"], "'algorithms.dpo.beta' must be a finite number, not nan"),
    ("float overflowing to infinity", [*RUN, "lora.alpha=1e400"], "'lora.alpha' must be a finite number"),
    ("infinite memory request", [*RUN, "executor.memory_gb=inf"], "'executor.memory_gb' must be a finite number"),
    ("100 kB key", [*RUN, f"{HUGE}=1"], "unknown key 'xxxx"),
    ("100 kB task name", [*RUN, f"task.name={HUGE}"], "unknown task 'xxxx"),
    ("100 kB suite name", ["run", f"suite={HUGE}"], "unknown suite 'xxxx"),
    ("100 kB suite path", ["run", f"suite=/tmp/{HUGE}.yaml"], "does not exist"),
    ("100 kB model path", [*RUN, "model.source=path", f"model.name_or_path={HUGE}"], "'model.name_or_path' 'xxxx"),
    ("100 kB preset name", [*RUN, f"model.preset={HUGE}"], "names unknown preset 'xxxx"),
    ("100 kB override without '='", [*RUN, HUGE], "is not of the form key=value"),
    ("100 kB in an unparsable list", [*RUN, f"seeds=[0,{HUGE}"], "cannot parse override 'seeds=[0,xxxx"),
    ("a list where a name belongs", [*RUN, "task.name=[gsm8k]"], "'task.name' must be a task name"),
    ("suite file not UTF-8", ["run", "suite=<<latin1_yaml>>"], "is not UTF-8 text (byte 0xe9"),
    ("suite file with NUL bytes", ["run", "suite=<<nul_yaml>>"], "is not valid YAML"),
    ("suite file repeating a key", ["run", "suite=<<twice_yaml>>"], "key 'seeds' appears twice"),
    ("suite path is a folder", ["run", "suite=<<a_folder_yaml>>"], "is a folder, not a YAML file"),
    ("seed beyond numpy's range", [*RUN, "seeds=[4294967296]"], "'seeds' must be < 2**32"),
    ("negative seed", [*RUN, "seeds=[-1]"], "'seeds' must be >= 0"),
    ("fractional seed", [*RUN, "seeds=[1.5]"], "bad value for 'seeds[0]'"),
    ("suite name escaping output_dir", [*RUN, "name=../../elsewhere"], "'name' must be usable as one folder name"),
    ("only repeating an algorithm", [*RUN, "only=[dpo,dpo]"], "'only' must not name an algorithm twice"),
    ("tracking server without a host", [*RUN, "tracking.uri=http://"], "'tracking.uri' names no host"),
    ("in-memory SQLite store", [*RUN, "tracking.uri=sqlite://"], "'tracking.uri' names no database file"),
    ("object store as tracking store", [*RUN, "tracking.uri=s3://bucket/runs"], "'tracking.uri' has scheme 's3'"),
    ("newline in a key", [*RUN, "sed\ns=[1]"], "unknown key 'sed\\ns'"),
    ("newline in a name", [*RUN, "task.name=gsm\n8k"], "unknown task"),
    ("empty value", [*RUN, "algorithms.dpo.beta="], "bad value for 'algorithms.dpo.beta'"),
    ("unclosed list", [*RUN, "seeds=[0,1"], "cannot parse override 'seeds=[0,1'"),
    ("unknown executor", [*RUN, "executor=slurm"], "'executor.name' must be one of local, ray"),
    ("executor given a list", [*RUN, "executor=[ray]"], "bad value for 'executor.name'"),
    ("no parallelism", [*RUN, "executor.max_parallel=0"], "'executor.max_parallel' must be >= 1"),
    ("fractional parallelism", [*RUN, "executor.max_parallel=1.5"], "bad value for 'executor.max_parallel'"),
    (
        "misspelled executor key",
        [*RUN, "executor.max_paralel=2"],
        "unknown key 'executor.max_paralel'; did you mean 'max_parallel'?",
    ),
    ("unknown nested executor key", [*RUN, "executor.slurm.partition=gpu"], "unknown key 'executor.slurm'"),
    ("misspelled ray key", [*RUN, "ray.adress=auto"], "unknown key 'ray.adress'; did you mean 'address'?"),
    ("ray section given a scalar", [*RUN, "ray=auto"], "'ray' must be a mapping"),
    ("unknown launcher preset", [*RUN, "launcher.config=nope"], "'launcher.config' names unknown preset 'nope'"),
    (
        "misspelled launcher key",
        [*RUN, "launcher.num_process=2"],
        "unknown key 'launcher.num_process'; did you mean 'num_processes'?",
    ),
    ("zero processes", [*RUN, "launcher.num_processes=0"], "'launcher.num_processes' must be >= 1"),
    ("launcher given a preset name", [*RUN, "launcher=ddp"], "'launcher' must be a mapping"),
    (
        "unreachable judge endpoint",
        [
            *RUN,
            "judge.kind=model",
            "judge.model=m",
            "judge.backend=openai",
            "judge.base_url=http://127.0.0.1:9/v1",
            "output_dir=<<tmp>>/out-judge",
        ],
        "judge endpoint http://127.0.0.1:9/v1/models is unreachable",
    ),
    (
        "judge key variable unset",
        [
            *RUN,
            "judge.kind=model",
            "judge.model=m",
            "judge.backend=openai",
            "judge.base_url=http://127.0.0.1:9/v1",
            "judge.api_key_env=HARNESS_NO_SUCH_KEY_VAR",
        ],
        "'judge.api_key_env' names HARNESS_NO_SUCH_KEY_VAR, which is not set",
    ),
    (
        "an API key where its variable's name belongs",
        [*RUN, "judge.api_key_env=sk-live-123"],
        "'judge.api_key_env' must be the name of an environment variable",
    ),
    (
        "unknown judge template",
        [*RUN, "judge.kind=gold", "judge.template=tl;dr"],
        "'judge.template' names unknown template",
    ),
    (
        "held-out RM folder missing",
        [*RUN, "gold.source=reward_model", "gold.name_or_path=<<tmp>>/no-rm"],
        "is not a Hugging Face model folder",
    ),
    (
        "optimising the held-out RM",
        [*RUN, "gold.source=reward_model", "gold.name_or_path=org/rm", "reward.source=gold"],
        "a held-out reward model stays held out",
    ),
]

# One line stays a line: ConfigError cuts a message at 1000 characters, whatever deeper layer wrote it; a huge
# value given by the user is cut to about 60 (`harness.config.shown`), so its refusal stays short.
LINE_LIMIT = 1100
HUGE_VALUE_LINE_LIMIT = 400


def materialize(argv: list[str], tmp: Path) -> list[str]:
    """The case's argv with each <<fixture>> replaced by the path of that fixture, made now under `tmp`."""
    made: dict[str, str] = {}

    def fixture(match: re.Match) -> str:
        name = match.group(1)
        if name not in made:
            made[name] = str(FIXTURES_FOR_CASES[name](tmp))
        return made[name]

    return [re.sub(r"<<(\w+)>>", fixture, item) if len(item) < 10_000 else item for item in argv]


def _save_tiny_model(folder: Path) -> None:
    """A local model folder in the real format whose tokenizer has no chat template."""
    from harness.config import ModelConfig
    from harness.modeling import build_tiny_causal_lm, build_word_tokenizer, save_checkpoint
    from harness.tasks.synthetic import vocabulary

    tokenizer = build_word_tokenizer(vocabulary(), max_length=96)
    shape = ModelConfig(n_embd=32, n_layer=1, n_head=2, max_positions=96)
    save_checkpoint(build_tiny_causal_lm(shape, tokenizer, seed=0), tokenizer, folder)


def test_the_corpus_has_distinct_well_formed_cases():
    names = [name for name, _, _ in CASES]
    assert len(names) == len(set(names)), "two cases share a name"
    assert len(CASES) >= 50  # a floor against losing the corpus, not a count to keep up to date
    for name, argv, culprit in CASES:
        assert argv and culprit, name


@pytest.mark.parametrize("case, argv, culprit", CASES, ids=[name for name, _, _ in CASES])
def test_bad_input_is_refused_in_one_line_with_nothing_left_behind(case, argv, culprit, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    argv = materialize(argv, tmp_path)
    capsys.readouterr()  # what making the fixtures printed is not the CLI's
    code = main(argv)
    stderr = capsys.readouterr().err
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert code == 2, f"{case}: exit {code}, stderr {stderr[:2000]!r}"
    assert len(lines) == 1, f"{case}: {stderr[:2000]!r}"
    assert culprit in lines[0], f"{case}: {lines[0][:2000]!r}"
    assert len(lines[0]) <= LINE_LIMIT, f"{case}: a {len(lines[0])}-character line: {lines[0][:500]!r}"
    if any(len(item) >= len(HUGE) for item in argv):
        assert len(lines[0]) <= HUGE_VALUE_LINE_LIMIT and "(100" in lines[0], f"{case}: {lines[0][:500]!r}"
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


def test_a_sweep_value_spelled_three_ways_across_a_suite_file_and_the_command_line_is_one_arm(
    tmp_path, monkeypatch, capsys
):
    """`harness plan` as a user runs it: the suite file's `1e-1` (a string to YAML), and `0.1` and `1.0e-1` on the
    command line plan one arm, dpo@beta=0.1, with one cell hash, so it is trained once and reported in one row."""
    monkeypatch.chdir(tmp_path)
    suite = write(tmp_path / "frontier.yaml", MINIMAL_SUITE + "seeds: [0]\nsweep:\n  algorithms.dpo.beta: [1e-1]\n")
    planned = set()
    for extra in (
        [],
        ["sweep.algorithms.dpo.beta=[0.1]"],
        ["sweep.algorithms.dpo.beta=[1.0e-1]"],
        ["only=[dpo@beta=1e-1]"],
    ):
        capsys.readouterr()
        assert main(["plan", f"suite={suite}", *extra]) == 0
        rows = [line.split()[:2] for line in capsys.readouterr().out.splitlines() if line.startswith("evaluate:dpo")]
        assert len(rows) == 1, rows
        planned.add(tuple(rows[0]))
    assert len(planned) == 1 and next(iter(planned))[0] == "evaluate:dpo@beta=0.1-s0", planned


# Issue 23: everything that can refuse a run answers before the banner, and no refusal repeats a secret.
PASTED_KEY = "sk-live-4f9aXk2LmQ8rT1vZ0123"
ALNUM_KEY = "Abc123Def456Ghi789Jkl012"  # passes the config's name check: only the preflight sees it
REFUSED_BEFORE_THE_BANNER = [
    (
        "tracking store unreachable",
        ["tracking.uri=http://127.0.0.1:9"],
        "cannot use MLflow tracking URI 'http://127.0.0.1:9'",
        "",
    ),
    (
        "tracking URI with a password",
        ["tracking.uri=http://alice:Pa55word9@127.0.0.1:9"],
        "http://alice:***@127.0.0.1:9",
        "Pa55word9",
    ),
    ("output_dir is a file", ["output_dir=<<a_file>>"], "is not a folder", ""),
    (
        "judge endpoint unreachable",
        ["judge.kind=model", "judge.model=m", "judge.backend=openai", "judge.base_url=http://127.0.0.1:9/v1"],
        "is unreachable",
        "",
    ),
    (
        "judge URL with a key in it",
        [
            "judge.kind=model",
            "judge.model=m",
            "judge.backend=openai",
            "judge.base_url=http://127.0.0.1:9/v1?api_key=Zz9Yy8Xx7",
        ],
        "api_key=***",
        "Zz9Yy8Xx7",
    ),
    (
        "a key pasted into api_key_env",
        [f"judge.api_key_env={PASTED_KEY}"],
        "'judge.api_key_env' must be the name",
        PASTED_KEY,
    ),
    (
        "an alphanumeric key pasted into api_key_env",
        [
            "judge.kind=model",
            "judge.model=m",
            "judge.backend=openai",
            "judge.base_url=http://127.0.0.1:9/v1",
            f"judge.api_key_env={ALNUM_KEY}",
        ],
        "'judge.api_key_env' holds what looks like an API key",
        ALNUM_KEY,
    ),
    ("nothing listens at ray.address", ["executor=ray", "ray.address=127.0.0.1:9"], "ray.address=127.0.0.1:9", ""),
    ("ray.address not host:port", ["executor=ray", "ray.address=256.1.1.1:6379"], "is not an address Ray can join", ""),
]


@pytest.mark.parametrize(
    "case, overrides, said, secret",
    REFUSED_BEFORE_THE_BANNER,
    ids=[case for case, _, _, _ in REFUSED_BEFORE_THE_BANNER],
)
def test_a_refused_run_prints_one_line_and_no_banner_or_secret(
    case, overrides, said, secret, tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(ALNUM_KEY, raising=False)
    argv = materialize([*RUN, "only=[dpo]", *overrides], tmp_path)
    capsys.readouterr()
    code = main(argv)
    captured = capsys.readouterr()
    assert code == 2, f"{case}: exit {code}: {captured.err[:2000]!r}"
    assert captured.out == "", f"{case}: printed before refusing: {captured.out!r}"  # no banner
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert len(lines) == 1 and said in lines[0], f"{case}: {captured.err[:2000]!r}"
    assert not secret or secret not in captured.err, f"{case}: the secret was echoed: {lines[0]!r}"
    assert not (tmp_path / "runs").exists(), f"{case}: a run folder was made"
