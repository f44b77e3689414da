"""Real-dataset task adapters on hand-written fixtures in the real schemas (no Hub access needed).

Every adapter builds TaskData from its fixture; each malformed fixture fails with a one-line error naming
the file and row; JSONL, JSON, Parquet and save_to_disk give the same rows; the GSM8K verifier and the HH
transcript splitting are checked on hand-written cases.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest

from harness.config import build
from harness.errors import ConfigError
from harness.tasks import gsm8k, hh, imdb, tldr, ultrafeedback
from harness.tasks.common import TaskData, load_task_data, save_task_data
from harness.tasks.loading import Source, TaskDataError, data_fingerprint, iter_source_rows, split_files

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "tasks"
SMALL = dict(num_sft_examples=5, num_preference_pairs=5, num_heldout_pairs=3, num_train_prompts=5, num_eval_prompts=4)
TASK_MODULES = (tldr, hh, ultrafeedback, gsm8k, imdb)


def load_rows(location: str, split: str, limit: int | None = None) -> list[dict]:
    """The rows of one split as the adapters read them (`iter_source_rows`), the first `limit` if given."""
    return [row.data for row in itertools.islice(iter_source_rows(Source(location, split)), limit)]


def _config(name: str, **overrides):
    """Each adapter's Config pointed at its local fixture, with small limits."""
    options = {**SMALL, **overrides}
    if name == "tldr":
        options.setdefault("sft_path", str(FIXTURES / "tldr" / "sft"))
        options.setdefault("preference_path", str(FIXTURES / "tldr" / "preference"))
        return tldr.Config(**options)
    modules = {"hh": hh, "ultrafeedback": ultrafeedback, "gsm8k": gsm8k, "imdb": imdb}
    default_paths = {
        "hh": FIXTURES / "hh" / "transcripts",
        "ultrafeedback": FIXTURES / "ultrafeedback" / "trl",
        "gsm8k": FIXTURES / "gsm8k",
        "imdb": FIXTURES / "imdb",
    }
    options.setdefault("path", str(default_paths[name]))
    return modules[name].Config(**options)


ADAPTER_CASES = {
    "tldr": (tldr, {}),
    "hh-transcripts": (hh, {}),
    "hh-conversational": (hh, {"path": str(FIXTURES / "hh" / "conversational")}),
    "ultrafeedback-trl": (ultrafeedback, {}),
    "ultrafeedback-h4": (
        ultrafeedback,
        {"path": str(FIXTURES / "ultrafeedback" / "h4"), "train_split": "train_prefs", "test_split": "test_prefs"},
    ),
    "gsm8k": (gsm8k, {}),
    "imdb": (imdb, {}),
}


def _build(case: str, seed: int = 0, **overrides) -> TaskData:
    module, options = ADAPTER_CASES[case]
    return module.build_task_data(_config(module.__name__.rsplit(".", 1)[1], **{**options, **overrides}), seed)


def _assert_text_keys(rows: list[dict], keys: tuple[str, ...]) -> None:
    for row in rows:
        for key in keys:
            assert isinstance(row[key], str) and row[key].strip(), (key, row)


# ---------------------------------------------------------------------------------------------------------
# Every adapter: interface, shapes, keys, disjoint evaluation, determinism
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("module", TASK_MODULES, ids=lambda m: m.__name__.rsplit(".", 1)[1])
def test_module_interface(module):
    assert dataclasses.is_dataclass(module.Config)
    assert callable(module.build_task_data) and callable(module.gold_reward)
    assert isinstance(module.HAS_GOLD_REWARD, bool)
    assert module.Config().trust_remote_code is False
    # The docstring names the default dataset id(s) and cites the anchors.
    default_ids = [value for key, value in dataclasses.asdict(module.Config()).items() if key.endswith("dataset")]
    assert default_ids and all(dataset_id in module.__doc__ for dataset_id in default_ids)
    assert "anchor" in module.__doc__.lower()


@pytest.mark.parametrize("module", (tldr, hh, ultrafeedback, imdb), ids=lambda m: m.__name__.rsplit(".", 1)[1])
def test_tasks_without_gold_reward_say_so(module):
    assert module.HAS_GOLD_REWARD is False
    with pytest.raises(NotImplementedError, match="no gold reward"):
        module.gold_reward("a prompt", " a completion", True)


@pytest.mark.parametrize("case", list(ADAPTER_CASES))
def test_adapter_builds_task_data_with_the_documented_keys(case):
    data = _build(case)
    assert isinstance(data, TaskData)
    assert len(data.sft) == 5 and len(data.preferences) == 5 and len(data.heldout_preferences) == 3
    assert len(data.train_prompts) == 5 and len(data.eval) == 4
    _assert_text_keys(data.sft, ("prompt", "completion"))
    _assert_text_keys(data.preferences + data.heldout_preferences, ("prompt", "chosen", "rejected"))
    _assert_text_keys(data.eval, ("prompt", "reference"))
    assert all(isinstance(prompt, str) and prompt.strip() for prompt in data.train_prompts)
    # Completions follow the harness's form: one leading space, no trailing whitespace.
    for text in [row["completion"] for row in data.sft] + [row["reference"] for row in data.eval]:
        assert text.startswith(" ") and not text.startswith("  ") and text == text.rstrip()
    assert all(pair["chosen"] != pair["rejected"] for pair in data.preferences + data.heldout_preferences)
    # Evaluation prompts are distinct and no training split uses them.
    eval_prompts = [row["prompt"] for row in data.eval]
    training = {row["prompt"] for row in data.sft + data.preferences} | set(data.train_prompts)
    assert len(set(eval_prompts)) == len(eval_prompts)
    assert not training & set(eval_prompts)
    # Stored as plain JSON, like every task (common.save_task_data).
    json.dumps(dataclasses.asdict(data))


@pytest.mark.parametrize("case", list(ADAPTER_CASES))
def test_adapter_is_deterministic(case):
    first, second = _build(case), _build(case)
    assert data_fingerprint(dataclasses.asdict(first)) == data_fingerprint(dataclasses.asdict(second))


def test_limits_take_the_first_rows_in_source_order():
    data = _build("tldr", num_sft_examples=2, num_train_prompts=3)
    source = load_rows(str(FIXTURES / "tldr" / "sft"), "train")
    assert [row["prompt"] for row in data.sft] == [row["prompt"] for row in source[:2]]
    assert data.train_prompts == [row["prompt"] for row in source[:3]]


def test_fewer_rows_than_asked_for_is_a_warning_not_an_error(caplog):
    data = _build("gsm8k", num_sft_examples=500)
    assert len(data.sft) == 10  # the whole train fixture
    assert "asked for 500 rows, the source gave 10" in caplog.text


@pytest.mark.parametrize("module", TASK_MODULES, ids=lambda m: m.__name__.rsplit(".", 1)[1])
def test_config_builds_from_suite_options_like_the_pipeline(module):
    # harness.config.build is how a suite's `task:` section becomes the Config (OmegaConf, typed).
    config = build(module.Config, {"num_eval_prompts": 3, "trust_remote_code": False}, "task.")
    assert isinstance(config, module.Config) and config.num_eval_prompts == 3
    with pytest.raises(ConfigError, match="'task.num_eval_prompts' must be >= 1"):
        build(module.Config, {"num_eval_prompts": 0}, "task.")
    with pytest.raises(ConfigError, match="unknown key 'task.num_eval_prompt'"):
        build(module.Config, {"num_eval_prompt": 3}, "task.")


@pytest.mark.parametrize(
    "module, overrides, key",
    [
        (tldr, {"num_eval_prompts": 0}, "num_eval_prompts"),
        (tldr, {"eval_split": "train"}, "eval_split"),
        (hh, {"num_heldout_pairs": -1}, "num_heldout_pairs"),
        (ultrafeedback, {"prompt_format": "chatml"}, "prompt_format"),
        (gsm8k, {"test_split": "train"}, "test_split"),
        (imdb, {"prompt_min_words": 6, "prompt_max_words": 3}, "prompt_max_words"),
        (imdb, {"completion_min_words": 0}, "completion_min_words"),
    ],
)
def test_config_validation_names_the_key(module, overrides, key):
    with pytest.raises(ConfigError, match=f"'{key}'"):
        module.Config(**overrides)


# ---------------------------------------------------------------------------------------------------------
# Malformed data: one line naming the file and the row
# ---------------------------------------------------------------------------------------------------------

MALFORMED_CASES = {
    "tldr": (
        {"sft_path": str(FIXTURES / "tldr" / "malformed.jsonl")},
        "tldr/malformed.jsonl row 3: missing column 'completion'",
    ),
    "hh": (
        {"path": str(FIXTURES / "hh" / "malformed.jsonl")},
        "hh/malformed.jsonl row 2: chosen and rejected differ before the last '\\n\\nAssistant:' turn",
    ),
    "ultrafeedback": (
        {"path": str(FIXTURES / "ultrafeedback" / "malformed.jsonl")},
        "ultrafeedback/malformed.jsonl row 1: column 'chosen' must be a non-empty list of messages",
    ),
    "gsm8k": (
        {"path": str(FIXTURES / "gsm8k" / "malformed.jsonl")},
        "gsm8k/malformed.jsonl row 3: answer has no '#### <number>' final line",
    ),
    "imdb": (
        {"path": str(FIXTURES / "imdb" / "malformed.jsonl")},
        "imdb/malformed.jsonl row 2: column 'label' must be one of [0, 1], got 'negative'",
    ),
}


@pytest.mark.parametrize("name", list(MALFORMED_CASES))
def test_malformed_fixture_fails_with_one_line_naming_file_and_row(name):
    overrides, expected_tail = MALFORMED_CASES[name]
    config = _config(name, **overrides)
    module = {"tldr": tldr, "hh": hh, "ultrafeedback": ultrafeedback, "gsm8k": gsm8k, "imdb": imdb}[name]
    with pytest.raises(TaskDataError) as raised:
        module.build_task_data(config, 0)
    message = str(raised.value)
    assert "\n" not in message
    assert message.endswith(expected_tail), message
    assert message.startswith(str(FIXTURES / name)), message


SKIP_CASES = {
    # name: (config key of the folder, the fixture folder with the good held-out split, train split, held-out split)
    "tldr": ("sft_path", FIXTURES / "tldr" / "sft", "train", "validation"),
    "hh": ("path", FIXTURES / "hh" / "transcripts", "train", "test"),
    "ultrafeedback": ("path", FIXTURES / "ultrafeedback" / "trl", "train", "test"),
    "gsm8k": ("path", FIXTURES / "gsm8k", "train", "test"),
    "imdb": ("path", FIXTURES / "imdb", "train", "test"),
}


@pytest.mark.parametrize("name", list(SKIP_CASES))
def test_skip_malformed_rows_drops_the_bad_row_with_a_warning(name, tmp_path, caplog):
    key, good_folder, train_split, heldout_split = SKIP_CASES[name]
    malformed = Path(MALFORMED_CASES[name][0][key])
    # The malformed file is the train split; the held-out split is the good fixture's.
    (tmp_path / f"{train_split}.jsonl").write_text(malformed.read_text())
    (tmp_path / f"{heldout_split}.jsonl").write_text((good_folder / f"{heldout_split}.jsonl").read_text())
    config = _config(name, **{key: str(tmp_path)}, skip_malformed_rows=True)
    module = {"tldr": tldr, "hh": hh, "ultrafeedback": ultrafeedback, "gsm8k": gsm8k, "imdb": imdb}[name]
    data = module.build_task_data(config, 0)
    assert len(data.sft) == 5 and data.eval
    assert "skipped 1 malformed rows" in caplog.text


def test_row_errors_for_bad_json_and_wrong_types(tmp_path):
    bad_json = tmp_path / "broken.jsonl"
    bad_json.write_text('{"prompt": "a", "completion": " b"}\n\n{"prompt": "c", \n')
    with pytest.raises(TaskDataError, match=r"broken.jsonl row 1: not valid JSON \(line 3: "):
        load_rows(str(bad_json), "train")

    not_object = tmp_path / "list.jsonl"
    not_object.write_text('["a", "b"]\n')
    with pytest.raises(TaskDataError, match="list.jsonl row 0: expected a JSON object, got list"):
        load_rows(str(not_object), "train")

    wrong_type = tmp_path / "tldr"
    wrong_type.mkdir()
    rows = [{"prompt": "SUBREDDIT: r/a\n\nTITLE: t\n\nPOST: p\n\nTL;DR:", "completion": 7}]
    (wrong_type / "train.jsonl").write_text("\n".join(json.dumps(row) for row in rows))
    with pytest.raises(TaskDataError, match="train.jsonl row 0: column 'completion' must be a string, got int"):
        tldr.build_task_data(tldr.Config(sft_path=str(wrong_type), **SMALL), 0)


def test_missing_local_sources_fail_before_any_hub_lookup(tmp_path):
    with pytest.raises(TaskDataError, match="no such file or folder"):
        load_rows(str(tmp_path / "absent.jsonl"), "train")
    with pytest.raises(
        TaskDataError, match="no file for split 'validation'.*the folder has: malformed.jsonl, test.jsonl, train.jsonl"
    ):
        load_rows(str(FIXTURES / "gsm8k"), "validation")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(TaskDataError, match="unsupported file type '.txt'"):
        load_rows(str(tmp_path / "notes.txt"), "train")


# ---------------------------------------------------------------------------------------------------------
# Loading: every local format gives the same rows; fingerprints
# ---------------------------------------------------------------------------------------------------------


def _write_parquet(rows: list[dict], path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)


def _copy_as_formats(folder: Path, tmp_path: Path, splits: tuple[str, ...]) -> dict[str, Path]:
    """The fixture folder's splits as a Hub-style Parquet folder, a DatasetDict folder and a JSON file."""
    import datasets

    by_split = {split: load_rows(str(folder), split) for split in splits}
    parquet_folder = tmp_path / "parquet"
    for split, rows in by_split.items():
        _write_parquet(rows, parquet_folder / "data" / f"{split}-00000-of-00001.parquet")
    saved_folder = tmp_path / "saved"
    datasets.DatasetDict({split: datasets.Dataset.from_list(rows) for split, rows in by_split.items()}).save_to_disk(
        str(saved_folder)
    )
    json_file = tmp_path / "splits.json"
    json_file.write_text(json.dumps(by_split))
    return {"parquet": parquet_folder, "save_to_disk": saved_folder, "json": json_file}


def test_jsonl_parquet_json_and_save_to_disk_give_the_same_rows(tmp_path):
    import datasets

    folder = FIXTURES / "ultrafeedback" / "trl"  # nested message lists and floats: the hardest schema
    formats = _copy_as_formats(folder, tmp_path, ("train", "test"))
    single = tmp_path / "single"
    datasets.Dataset.from_list(load_rows(str(folder), "test")).save_to_disk(str(single))
    _write_parquet(load_rows(str(folder), "test"), tmp_path / "test.parquet")
    for split in ("train", "test"):
        expected = load_rows(str(folder / f"{split}.jsonl"), split)
        for name, location in formats.items():
            assert load_rows(str(location), split) == expected, (name, split)
    expected_test = load_rows(str(folder), "test")
    assert load_rows(str(single), "test") == expected_test  # a saved Dataset (one split)
    assert load_rows(str(tmp_path / "test.parquet"), "test") == expected_test
    assert load_rows(str(formats["parquet"]), "train", limit=3) == load_rows(str(folder), "train")[:3]
    assert data_fingerprint(load_rows(str(formats["save_to_disk"]), "train")) == data_fingerprint(
        load_rows(str(folder), "train")
    )


def test_split_files_find_hub_shards_in_order(tmp_path):
    for name in (
        "data/train-00001-of-00002.parquet",
        "data/train-00000-of-00002.parquet",
        "data/test-00000-of-00001.parquet",
    ):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("")
    assert [p.name for p in split_files(tmp_path, "train")] == [
        "train-00000-of-00002.parquet",
        "train-00001-of-00002.parquet",
    ]


def test_a_folder_with_several_configs_is_refused(tmp_path):
    for config_name in ("main", "socratic"):
        (tmp_path / config_name).mkdir()
        (tmp_path / config_name / "train.jsonl").write_text('{"question": "q", "answer": "#### 1"}\n')
    with pytest.raises(TaskDataError, match=r"files for split 'train' in several folders \(main, socratic\)"):
        load_rows(str(tmp_path), "train")
    assert load_rows(str(tmp_path / "main"), "train") == [{"question": "q", "answer": "#### 1"}]


@pytest.mark.parametrize(
    "case, folder, splits", [("imdb", "imdb", ("train", "test")), ("gsm8k", "gsm8k", ("train", "test"))]
)
def test_adapter_gives_the_same_task_data_from_parquet_and_save_to_disk(case, folder, splits, tmp_path):
    expected = dataclasses.asdict(_build(case))
    for location in _copy_as_formats(FIXTURES / folder, tmp_path, splits).values():
        assert dataclasses.asdict(_build(case, path=str(location))) == expected, location


def test_data_fingerprint_is_stable_and_sensitive():
    rows = load_rows(str(FIXTURES / "gsm8k"), "train")
    fingerprint = data_fingerprint(rows)
    assert fingerprint == data_fingerprint([dict(reversed(list(row.items()))) for row in rows])  # key order
    assert len(fingerprint) == 16 and int(fingerprint, 16) >= 0
    changed = [dict(row) for row in rows]
    changed[4]["answer"] = changed[4]["answer"].replace("1,248", "1,249")
    assert data_fingerprint(changed) != fingerprint
    assert data_fingerprint(rows[:-1]) != fingerprint
    assert data_fingerprint(list(reversed(rows))) != fingerprint  # order is part of the data


def test_importing_the_adapters_loads_no_heavy_library():
    code = (
        "import sys\n"
        "import harness.tasks.tldr, harness.tasks.hh, harness.tasks.ultrafeedback, harness.tasks.gsm8k, harness.tasks.imdb\n"
        "print(sorted(m for m in ('torch', 'transformers', 'datasets', 'pyarrow') if m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


# ---------------------------------------------------------------------------------------------------------
# TL;DR
# ---------------------------------------------------------------------------------------------------------


def test_tldr_rows_and_preference_filters():
    data = _build("tldr")
    assert all(row["prompt"].startswith("SUBREDDIT: r/") and row["prompt"].endswith("TL;DR:") for row in data.sft)
    assert data.sft[1]["completion"] == " Paid off my car loan early and my credit score went down; is that normal?"
    # Validation pairs: the CNN/DailyMail row and the chosen == rejected row are dropped.
    assert all(pair["prompt"].startswith("SUBREDDIT: r/") for pair in data.heldout_preferences)
    everything = _build("tldr", reddit_only_preferences=False, num_heldout_pairs=10)
    assert len(everything.heldout_preferences) == 5
    assert sum(pair["prompt"].startswith("TITLE:") for pair in everything.heldout_preferences) == 1
    assert (
        data.eval[0]["reference"]
        == " Girlfriend of five years got her dream job across the country; I do not know if I should go."
    )


# ---------------------------------------------------------------------------------------------------------
# HH transcripts
# ---------------------------------------------------------------------------------------------------------

TRANSCRIPT = (
    "\n\nHuman: My tomato leaves are turning yellow."
    "\n\nAssistant: Are they at the bottom of the plant?"
    "\n\nHuman: Yes, at the bottom."
    "\n\nAssistant: Those older leaves often lack nitrogen; remove them and feed the plant."
)


def test_split_transcript_cuts_at_the_last_assistant_turn():
    prompt, completion = hh.split_transcript(TRANSCRIPT)
    assert prompt == (
        "\n\nHuman: My tomato leaves are turning yellow."
        "\n\nAssistant: Are they at the bottom of the plant?"
        "\n\nHuman: Yes, at the bottom."
        "\n\nAssistant:"
    )
    assert completion == " Those older leaves often lack nitrogen; remove them and feed the plant."
    assert prompt + completion == TRANSCRIPT


@pytest.mark.parametrize(
    "transcript, problem",
    [
        ("\n\nHuman: Hello there.", "no '\\\\n\\\\nAssistant:' turn"),
        ("\n\nHuman: Hi.\n\nAssistant:   ", "final Assistant turn is empty"),
    ],
)
def test_split_transcript_refuses_a_transcript_without_a_reply(transcript, problem):
    with pytest.raises(ValueError, match=problem):
        hh.split_transcript(transcript)


def test_render_transcript_inverts_the_split():
    messages = [
        {"role": "user", "content": "My tomato leaves are turning yellow."},
        {"role": "assistant", "content": "Are they at the bottom of the plant?"},
        {"role": "user", "content": "Yes, at the bottom."},
    ]
    assert hh.render_transcript(messages) == hh.split_transcript(TRANSCRIPT)[0]


def test_hh_conversational_and_transcript_sources_agree():
    transcripts, conversational = _build("hh-transcripts"), _build("hh-conversational")
    assert transcripts.preferences == conversational.preferences
    assert transcripts.heldout_preferences == conversational.heldout_preferences
    assert transcripts.eval == conversational.eval
    # The transcript fixture's identical pair (row 4) is SFT data but not a preference pair.
    assert any("boil an egg" in row["prompt"] for row in transcripts.sft)
    assert not any("boil an egg" in pair["prompt"] for pair in transcripts.preferences)


def test_hh_rows_that_are_errors(tmp_path):
    def build(row: dict) -> None:
        (tmp_path / "train.jsonl").write_text(json.dumps(row) + "\n")
        (tmp_path / "test.jsonl").write_text(json.dumps(row) + "\n")
        hh.build_task_data(hh.Config(path=str(tmp_path), **SMALL), 0)

    with pytest.raises(TaskDataError, match=r"train.jsonl row 0: column 'rejected': no '\\n\\nAssistant:' turn"):
        build({"chosen": "\n\nHuman: Hi.\n\nAssistant: Hello.", "rejected": "\n\nHuman: Hi."})
    with pytest.raises(
        TaskDataError, match="train.jsonl row 0: column 'chosen' must hold exactly one assistant message, got 2"
    ):
        build(
            {
                "prompt": [{"role": "user", "content": "Hi."}],
                "chosen": [{"role": "assistant", "content": "Hello."}, {"role": "assistant", "content": "Again."}],
                "rejected": [{"role": "assistant", "content": "Go away."}],
            }
        )
    with pytest.raises(TaskDataError, match="train.jsonl row 0: column 'prompt' message 0: unknown role 'human'"):
        build(
            {
                "prompt": [{"role": "human", "content": "Hi."}],
                "chosen": [{"role": "assistant", "content": "a"}],
                "rejected": [{"role": "assistant", "content": "b"}],
            }
        )


# ---------------------------------------------------------------------------------------------------------
# UltraFeedback
# ---------------------------------------------------------------------------------------------------------


def test_ultrafeedback_keeps_messages_and_scores():
    data = _build("ultrafeedback-trl")
    first = data.preferences[0]
    assert first["prompt"] == "\n\nHuman: Write a haiku about autumn leaves.\n\nAssistant:"
    assert first["prompt_messages"] == [{"role": "user", "content": "Write a haiku about autumn leaves."}]
    assert (first["score_chosen"], first["score_rejected"]) == (8.5, 4.0)
    assert all(row["prompt_messages"] for row in data.sft + data.eval)
    assert "messages" not in first  # TRL reads a "messages" column as a whole conversation
    # The bakery pair (chosen == rejected) is dropped from the preferences but kept as an SFT row.
    assert not any(
        "bakery" in pair["prompt"] for pair in _build("ultrafeedback-trl", num_preference_pairs=10).preferences
    )


def test_ultrafeedback_h4_and_trl_forms_agree_and_plain_prompts():
    assert _build("ultrafeedback-h4").preferences == _build("ultrafeedback-trl").preferences
    plain = _build("ultrafeedback-trl", prompt_format="plain")
    assert plain.sft[0]["prompt"] == "Write a haiku about autumn leaves."


# ---------------------------------------------------------------------------------------------------------
# GSM8K: the verifier and the gold table
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "completion, expected",
    [
        (" 48 * 26 = 1248 desks.\n#### 1,234", Decimal(1234)),
        (" so the total is 1,234.", Decimal(1234)),
        (" She has 15 apples left.", Decimal(15)),
        (" It fell to -7 degrees", Decimal(-7)),
        (" 10-3=7", Decimal(7)),  # subtraction, not a negative 3
        (" The change is $3.50.", Decimal("3.5")),
        (" #### 12 (checked in 3 steps)", Decimal(12)),
        (" #### 0.5", Decimal("0.5")),
        (" no number here", None),
        (" ####", None),
    ],
)
def test_final_number(completion, expected):
    assert gsm8k.final_number(completion) == expected


def test_gold_number_is_strict():
    assert gsm8k.gold_number("5 + 5 = 10\n#### 1,250") == Decimal(1250)
    assert gsm8k.gold_number("the answer is 10") is None
    assert gsm8k.gold_number("#### ten") is None


@pytest.fixture
def gold_table(monkeypatch) -> dict:
    """A fresh, empty prompt -> gold table for one test."""
    table: dict = {}
    monkeypatch.setattr(gsm8k, "_GOLD_ANSWERS", table)
    return table


def test_gsm8k_gold_reward_on_hand_written_completions(gold_table):
    data = _build("gsm8k", num_sft_examples=10, num_train_prompts=10)
    prompts = {row["prompt"].split("Question: ")[1][:20]: row["prompt"] for row in data.sft}
    desks, change, cold, apples = (
        prompts[key]
        for key in ("A school has 48 clas", "Lena buys 3 notebook", "The temperature was ", "Mia has 12 apples. S")
    )
    cases = [
        (desks, " 48 * 26 = 1248\n#### 1,248", 1.0),
        (desks, " 48 * 26 = 1248\n#### 1248.", 1.0),
        (desks, " There are 1,248 desks.", 1.0),  # last-number fallback
        (desks, " There are 1,258 desks.", 0.0),
        (desks, " #### 1248 desks, or 26 per room", 1.0),  # the number after #### wins over later ones
        (change, " Her change is $1.250", 1.0),  # "1.250" == 1.25
        (change, " #### 1.3", 0.0),
        (cold, " 4 - 11 = -7\n#### -7", 1.0),
        (cold, " #### 7", 0.0),
        (apples, " #### fifteen", 0.0),
        (apples, "", 0.0),
    ]
    for prompt, completion, expected in cases:
        assert gsm8k.gold_reward(prompt, completion, stopped=True) == expected, completion
    # `stopped` does not change the verdict: a truncated but correct answer is still correct.
    assert gsm8k.gold_reward(desks, " #### 1,248", stopped=False) == 1.0


def test_gsm8k_reference_answers_score_one_and_synthetic_negatives_zero(gold_table):
    data = _build("gsm8k")
    for row in data.sft:
        assert gsm8k.gold_reward(row["prompt"], row["completion"], True) == 1.0
    for row in data.eval:
        assert gsm8k.gold_reward(row["prompt"], row["reference"], True) == 1.0
    for pair in data.preferences + data.heldout_preferences:
        assert gsm8k.gold_reward(pair["prompt"], pair["chosen"], True) == 1.0
        assert gsm8k.gold_reward(pair["prompt"], pair["rejected"], True) == 0.0
    assert all(prompt.endswith("\nAnswer:") and "Question: " in prompt for prompt in data.train_prompts)


def test_gsm8k_negatives_depend_on_the_seed():
    rejected = {
        seed: [pair["rejected"] for pair in _build("gsm8k", seed=seed, num_preference_pairs=10).preferences]
        for seed in range(4)
    }
    assert len({tuple(values) for values in rejected.values()}) > 1
    assert _build("gsm8k", seed=1).sft == _build("gsm8k", seed=2).sft  # the data rows themselves do not


def test_gsm8k_gold_table_is_rebuilt_from_saved_task_data(gold_table, tmp_path):
    saved = tmp_path / "data.json"
    save_task_data(_build("gsm8k"), saved)
    gold_table.clear()  # a new process: nothing built here
    data = load_task_data(saved)
    with pytest.raises(gsm8k.UnknownPromptError, match="remember_gold_answers"):
        gsm8k.gold_reward(data.eval[0]["prompt"], " #### 5", True)
    assert gsm8k.remember_gold_answers(data) > 0
    assert gsm8k.gold_reward(data.eval[0]["prompt"], " #### 5", True) == 1.0  # 30 stickers / 6 friends
    assert all(prompt.strip() in gold_table for prompt in data.train_prompts)


def test_gsm8k_unknown_prompt_is_an_error_not_a_zero(gold_table):
    with pytest.raises(gsm8k.UnknownPromptError) as raised:
        gsm8k.gold_reward("Question: never seen\nAnswer:", " #### 3", True)
    assert "\n" not in str(raised.value)


# ---------------------------------------------------------------------------------------------------------
# IMDB
# ---------------------------------------------------------------------------------------------------------


def test_imdb_cuts_balance_and_label_pairs():
    data = _build("imdb", num_sft_examples=10, num_preference_pairs=5)
    reviews = load_rows(str(FIXTURES / "imdb"), "train")
    positive_text = " ".join(r["text"].replace("<br />", " ") for r in reviews if r["label"] == 1).split()
    negative_text = " ".join(r["text"].replace("<br />", " ") for r in reviews if r["label"] == 0).split()
    for row in data.sft:
        assert 2 <= len(row["prompt"].split()) <= 8
        assert 4 <= len(row["completion"].split()) <= 16
        assert "<br" not in row["prompt"] + row["completion"]
    # The fixture is sorted by label like the Hub split; the adapter interleaves negative and positive.
    first_words = [row["prompt"].split()[0] for row in data.sft[:4]]
    assert first_words == ["I", "A", "Two", "This"]
    joined_positive, joined_negative = " ".join(positive_text), " ".join(negative_text)
    for pair in data.preferences:
        assert pair["chosen"].strip() in joined_positive and pair["rejected"].strip() in joined_negative
        assert len(pair["chosen"].split()) == len(pair["rejected"].split())
    assert imdb.REWARD_CLASSIFIER == "lvwerra/distilbert-imdb"


def test_imdb_seed_changes_the_cuts_not_the_reviews():
    first, second = _build("imdb", seed=0), _build("imdb", seed=1)
    assert [row["prompt"] for row in first.sft] != [row["prompt"] for row in second.sft]
    assert [row["prompt"].split()[0] for row in first.sft] == [row["prompt"].split()[0] for row in second.sft]


def test_imdb_needs_both_labels(tmp_path):
    rows = [r for r in load_rows(str(FIXTURES / "imdb"), "train") if r["label"] == 0]
    for split in ("train", "test"):
        (tmp_path / f"{split}.jsonl").write_text("\n".join(json.dumps(row) for row in rows))
    with pytest.raises(TaskDataError, match="needs both negative"):
        imdb.build_task_data(imdb.Config(path=str(tmp_path), **SMALL), 0)
