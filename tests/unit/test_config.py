"""Config resolution: every suite and preset resolves; precedence; one-line errors for bad input."""

from __future__ import annotations

import dataclasses
import json

import pytest

from harness import record
from harness.algorithms.spec import algorithm
from harness.config import (
    CONFIGS_DIR,
    ModelConfig,
    build,
    fingerprint,
    flatten,
    load_config,
    read_yaml,
    suite_names,
)
from harness.errors import ConfigError
from harness.registry import ALGORITHMS


@pytest.mark.parametrize("suite", suite_names())
def test_every_suite_resolves(suite):
    config = load_config(suite)
    assert config.suite.name == suite
    assert config.selected_arms
    # The suite file opens with the command that runs it (DESIGN §2, torchtune style).
    first_line = config.suite_file.read_text().splitlines()[0]
    assert first_line == f"# harness run suite={suite}"


@pytest.mark.parametrize("name", ALGORITHMS.names())
def test_every_algorithm_declares_a_spec_and_builds_its_defaults(name):
    resolved = algorithm(name)
    built = build(resolved.config_class, dict(resolved.defaults), f"algorithms.{name}.")
    fields = {field.name for field in dataclasses.fields(built)}
    spec = resolved.spec
    assert spec.family in record.FAMILIES
    assert spec.kl_knob in fields  # the knob a frontier sweeps is an option of its Config
    assert set(resolved.defaults) <= fields
    assert isinstance(spec.describe_data(built), str) and spec.describe_data(built)
    assert resolved.about  # `harness list algorithms <name>` has a text to show


def test_variants_are_presets_of_their_base_and_inherit_its_options():
    grpo = algorithm("grpo")
    for name, changed in {
        "dr_grpo": {"loss_type": "dr_grpo", "scale_rewards": "none"},
        "dapo": {"epsilon_high": 0.28, "mask_truncated_completions": True},
    }.items():
        variant = algorithm(name)
        assert variant.module is grpo.module and variant.defaults == changed
        assert variant.spec.family == grpo.spec.family and variant.spec.kl_knob == grpo.spec.kl_knob
    assert algorithm("gspo").spec.curves[-1] == "clip_ratio/region_mean"  # a preset may draw more curves
    assert algorithm("ipo").module is algorithm("dpo").module and algorithm("ipo").defaults["loss_type"] == "ipo"
    # every option of the base, how TRL runs vLLM included, is the variant's too
    config = load_config("tiny", ["algorithms.dapo.vllm_mode=server", "only=[dapo]"])
    assert config.algorithms["dapo"].vllm_mode == "server" and config.algorithms["dapo"].epsilon_high == 0.28


def test_rollouts_generator_is_one_suite_switch_and_a_bad_value_is_refused_in_one_line():
    from harness.generation.rollouts import rollout_generator

    config = load_config("tiny", ["rollouts.generator=vllm"])
    assert config.suite.rollouts.generator == "vllm"
    assert [rollout_generator(config.suite, name) for name in ("ppo", "grpo", "online_dpo", "dpo", "best_of_n")] == [
        "vllm",
        "vllm",
        "vllm",
        "none",  # offline and inference-time algorithms sample no rollouts while they train
        "none",
    ]
    # auto on a CPU suite: transformers, whether vllm is installed or not
    assert rollout_generator(load_config("tiny").suite, "ppo") == "hf"
    with pytest.raises(ConfigError) as error:
        load_config("tiny", ["rollouts.generator=vlm"])
    message = str(error.value)
    assert "'rollouts.generator'" in message and "did you mean 'vllm'" in message and "\n" not in message, message
    with pytest.raises(ConfigError, match="unknown key 'algorithms.grpo.use_vllm'"):  # the switch is the suite's now
        load_config("tiny", ["algorithms.grpo.use_vllm=true"])


def test_an_unknown_option_of_a_variant_names_the_variant_and_the_nearest_option():
    with pytest.raises(ConfigError) as error:
        load_config("tiny", ["algorithms.dapo.epsilon_hihg=0.3"])
    message = str(error.value)
    assert "'algorithms.dapo.epsilon_hihg'" in message and "did you mean 'epsilon_high'" in message, message
    assert "\n" not in message


def test_a_preset_key_that_is_not_a_config_field_is_refused_with_its_file(monkeypatch):
    from harness.algorithms import grpo
    from harness.algorithms.spec import Preset
    from harness.registry import Entry

    monkeypatch.setattr(grpo, "BROKEN", Preset(values={"epsilon_hi": 0.3}, about="a throwaway variant"), raising=False)
    monkeypatch.setitem(ALGORITHMS._entries, "broken", Entry("broken", "harness.algorithms.grpo:BROKEN", "throwaway"))
    algorithm.cache_clear()
    try:
        result = cli_in_process(["validate", "suite=tiny", "algorithms.broken.beta=0.1", "only=[broken]"])
    finally:
        algorithm.cache_clear()
    code, err = result
    assert code == 2
    assert grpo.__file__ in err and "'epsilon_hi'" in err and "did you mean 'epsilon_high'" in err, err
    assert len(err.strip().splitlines()) == 1, err


def cli_in_process(argv):
    """The CLI's exit code and stderr, in this process (the test registers an entry no subprocess would see)."""
    import contextlib
    import io

    from harness.cli import main

    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(argv)
    return code, err.getvalue()


@pytest.mark.parametrize("preset", sorted((CONFIGS_DIR / "models").glob("*.yaml")), ids=lambda p: p.stem)
def test_every_model_preset_builds(preset):
    assert isinstance(build(ModelConfig, read_yaml(preset), "model."), ModelConfig)


def test_overrides_reach_their_fields():
    config = load_config(
        "tiny", ["seeds=[0,1,2]", "algorithms.dpo.beta=0.3", "only=[dpo]", "evaluation.samples_per_prompt=2"]
    )
    assert config.suite.seeds == [0, 1, 2]
    assert config.algorithms["dpo"].beta == 0.3
    assert config.selected_arms == ["dpo"]
    assert config.suite.evaluation.samples_per_prompt == 2


def test_precedence_defaults_preset_suite_override(tmp_path):
    from harness.algorithms.dpo import IPO
    from harness.algorithms.dpo import Config as DPOConfig

    suite = tmp_path / "mine.yaml"
    suite.write_text(
        "# harness run suite=mine.yaml\n"
        "task: {name: synthetic_reviews}\n"
        "algorithms:\n  ipo: {batch_size: 8, learning_rate: 0.5, loss_type: ipo}\n"
    )
    config = load_config(str(suite), ["algorithms.ipo.learning_rate=0.25"])
    ipo = config.algorithms["ipo"]
    assert ipo.label_smoothing == DPOConfig().label_smoothing  # the Config's default, in no preset or file
    assert ipo.beta == IPO.values["beta"] != DPOConfig().beta  # the preset beats the Config
    assert ipo.batch_size == 8  # the suite beats the Config
    assert ipo.learning_rate == 0.25  # the command line beats the suite
    assert config.suite.name == "mine"


def test_model_preset_sits_under_suite_values():
    config = load_config("tiny", ["model.n_layer=3"])
    preset = read_yaml(CONFIGS_DIR / "models" / "tiny-gpt2.yaml")
    assert config.suite.model.n_layer == 3
    assert config.suite.model.n_embd == preset["n_embd"]


@pytest.mark.parametrize(
    "overrides, expected",
    [
        (["algorithms.dpo.bta=0.3"], "unknown key 'algorithms.dpo.bta'; did you mean 'beta'?"),
        (["sedes=[1]"], "unknown key 'sedes'; did you mean 'seeds'?"),
        (
            ["evaluation.sample_per_prompt=2"],
            "unknown key 'evaluation.sample_per_prompt'; did you mean 'samples_per_prompt'?",
        ),
        (["seeds=abc"], "'seeds'"),
        (["algorithms.dpo.beta=abc"], "'algorithms.dpo.beta'"),
        (["algorithms.dpo.beta=-1"], "'algorithms.dpo.beta' must be > 0"),
        (["algorithms.grpo.num_generations=1"], "'algorithms.grpo.num_generations' must be >= 2"),
        (["evaluation.samples_per_prompt=0"], "'evaluation.samples_per_prompt' must be > 0"),
        (["sampling.top_p=1.5"], "'sampling.top_p' must be in (0, 1]"),
        (["budget.prompts=0"], "'budget.prompts' must be > 0"),
        (["seeds=[]"], "'seeds' must list at least one seed"),
        (["seeds=[1,1]"], "'seeds' must not repeat a seed"),
        (["only=[ppx]"], "'only' names 'ppx'"),
        (["algorithms.dpx={}"], "unknown algorithm 'dpx'; did you mean 'dpo'?"),
        (["task.name=synthetic_review"], "unknown task 'synthetic_review'; did you mean 'synthetic_reviews'?"),
        (["task.num_sft_examples=0"], "'task.num_sft_examples' must be >= 1"),
        (["model.preset=tiny-gpt3"], "unknown preset 'tiny-gpt3'; did you mean 'tiny-gpt2'?"),
        (["model.n_embd=65"], "'model.n_embd' must be divisible by model.n_head"),
        (["tracking.uri=nowhere"], "'tracking.uri' must be a URI"),
        (["reward.source=oracle"], "'reward.source' must be 'proxy' or 'gold'"),
        (["precision=fp16"], "'precision' must be fp32 or bf16"),
        (["noequals"], "override 'noequals' is not of the form key=value"),
        (["model=3"], "'model' must be a mapping"),
        (["judge.kind=golld"], "'judge.kind' must be one of none, model, gold, trained; did you mean 'gold'?"),
        (["judge.kind=model"], "'judge.model' is required when judge.kind is model"),
        (["judge.model=x"], "'judge.model' is only read when judge.kind is model"),
        (
            ["judge.kind=model", "judge.model=m", "judge.backend=openai"],
            "'judge.base_url' is required with backend openai",
        ),
        (
            ["judge.kind=model", "judge.model=./missing-judge"],
            "'judge.model' './missing-judge' is not a Hugging Face model folder",
        ),
        (["judge.backend=tgi"], "'judge.backend' must be one of hf, vllm, openai"),
        (["judge.base_url=127.0.0.1:8000"], "'judge.base_url' must start with http:// or https://"),
        (["judge.api_key_env=sk-abc123"], "'judge.api_key_env' must be the name of an environment variable"),
        (["judge.template=tldrr"], "'judge.template' names unknown template 'tldrr'; did you mean 'tldr'?"),
        (["judge.vs_sft=false", "judge.vs_reference=false"], "the judge would compare nothing"),
        (["judge.training.epochs=0"], "'judge.training.epochs' must be > 0"),
        (["gold.source=rm"], "'gold.source' must be one of task, reward_model"),
        (["gold.source=reward_model"], "'gold.name_or_path' is required when gold.source is reward_model"),
        (
            ["gold.source=reward_model", "gold.name_or_path=/no/such/rm"],
            "'gold.name_or_path' '/no/such/rm' is not a Hugging Face model folder",
        ),
        (
            ["gold.source=reward_model", "gold.name_or_path=org/rm", "reward.source=gold"],
            "a held-out reward model stays held out",
        ),
    ],
)
def test_bad_overrides_are_refused_in_one_line(overrides, expected):
    with pytest.raises(ConfigError) as caught:
        load_config("tiny", overrides)
    message = str(caught.value)
    assert expected in message
    assert "\n" not in message


def test_unknown_suite_suggests_the_closest():
    with pytest.raises(ConfigError, match="unknown suite 'tny'; did you mean 'tiny'"):
        load_config("tny")


def test_missing_suite_file_names_the_path(tmp_path):
    with pytest.raises(ConfigError, match="does-not-exist.yaml' does not exist"):
        load_config(str(tmp_path / "does-not-exist.yaml"))


def test_malformed_suite_yaml_names_file_and_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("task: {name: synthetic_reviews\nalgorithms: [\n")
    with pytest.raises(ConfigError, match=r"bad.yaml' line \d+ is not valid YAML"):
        load_config(str(bad))


def test_suite_without_task_or_algorithms_is_refused(tmp_path):
    suite = tmp_path / "empty.yaml"
    suite.write_text("seeds: [0]\n")
    with pytest.raises(ConfigError, match="'task.name' is required"):
        load_config(str(suite))
    suite.write_text("task: {name: synthetic_reviews}\n")
    with pytest.raises(ConfigError, match="'algorithms' must name at least one algorithm"):
        load_config(str(suite))


def test_resolved_config_round_trips_to_flat_params_and_a_stable_hash():
    first = load_config("tiny")
    second = load_config("tiny")
    flat = flatten(first.to_dict())
    assert flat["algorithms.dpo.beta"] == first.algorithms["dpo"].beta
    assert flat["task.name"] == "synthetic_reviews"
    assert fingerprint(first.to_dict()) == fingerprint(second.to_dict())
    assert fingerprint(first.to_dict()) != fingerprint(load_config("tiny", ["algorithms.dpo.beta=0.2"]).to_dict())


# ---------------------------------------------------------------------------------------------------------
# Non-finite numbers: every float key of every config dataclass, found by walking the dataclasses, so a
# float key added tomorrow is covered without touching this test.
# ---------------------------------------------------------------------------------------------------------


def _holds_float(annotation) -> bool:
    import typing

    if annotation is float:
        return True
    return any(_holds_float(arg) for arg in typing.get_args(annotation))


def _float_keys(schema, prefix: str):
    """(full key, whether the field is a list) for every float field of `schema`, nested sections included."""
    import typing

    hints = typing.get_type_hints(schema)
    for item in dataclasses.fields(schema):
        annotation = hints[item.name]
        if dataclasses.is_dataclass(annotation):
            yield from _float_keys(annotation, f"{prefix}{item.name}.")
        elif _holds_float(annotation):
            yield f"{prefix}{item.name}", typing.get_origin(annotation) in (list, tuple)


def _every_float_key():
    from harness.config import SuiteConfig
    from harness.registry import TASKS

    keys = [("suite", key, is_list) for key, is_list in _float_keys(SuiteConfig, "")]
    for name in ALGORITHMS.names():
        keys += [
            ("algorithm", key, is_list)
            for key, is_list in _float_keys(algorithm(name).config_class, f"algorithms.{name}.")
        ]
    for name in TASKS.names():
        keys += [(f"task:{name}", key, is_list) for key, is_list in _float_keys(TASKS.get(name).Config, "task.")]
    return keys


FLOAT_KEYS = _every_float_key()


def test_the_float_key_walk_finds_the_known_ones():
    keys = {key for _, key, _ in FLOAT_KEYS}
    assert {
        "algorithms.ppo.kl_coef",
        "algorithms.dpo.beta",
        "lora.alpha",
        "sampling.top_p",
        "executor.memory_gb",
    } <= keys
    assert len(keys) >= 20


@pytest.mark.parametrize("value", ["inf", "nan"])
@pytest.mark.parametrize("owner, key, is_list", FLOAT_KEYS, ids=[f"{o}:{k}" for o, k, _ in FLOAT_KEYS])
def test_every_float_key_refuses_non_finite_numbers(owner, key, is_list, value):
    """`algorithms.ppo.kl_coef=inf` was accepted and training started; NaN read as "must be > 0"."""
    from harness.registry import TASKS

    given = f"[{value}]" if is_list else value
    named = f"'{key}[0]'" if is_list else f"'{key}'"
    with pytest.raises(ConfigError) as caught:
        if owner.startswith("task:"):  # one task per suite: build the task's section directly
            field = key[len("task.") :]
            build(
                TASKS.get(owner[len("task:") :]).Config, {field: [float(value)] if is_list else float(value)}, "task."
            )
        else:
            load_config("tiny", [f"{key}={given}"])
    assert f"{named} must be a finite number" in str(caught.value)


@pytest.mark.parametrize("value", ["-inf", "1e400", ".inf", "NaN"])
def test_every_spelling_of_a_non_finite_number_is_refused(value):
    with pytest.raises(ConfigError, match="'algorithms.ppo.kl_coef' must be a finite number"):
        load_config("tiny", [f"algorithms.ppo.kl_coef={value}"])


def test_finite_numbers_still_pass():
    config = load_config("tiny", ["algorithms.ppo.kl_coef=0.5", "lora.alpha=1e3", "executor.memory_gb=0"])
    assert config.algorithms["ppo"].kl_coef == 0.5


# ---------------------------------------------------------------------------------------------------------
# Echoed values are cut, escaped and kept on one line
# ---------------------------------------------------------------------------------------------------------


def test_shown_cuts_long_values_in_the_middle_and_escapes_control_characters():
    from harness.errors import shown

    assert shown("short") == "short"
    long = "a" * 50_000 + "TAIL"
    text = shown(long)
    assert len(text) < 100 and text.startswith("a" * 40) and "TAIL (50004 characters)" in text and "…" in text
    assert shown("two\nlines") == "two\\nlines"


def test_a_config_error_is_always_one_bounded_line():
    message = str(ConfigError("first\nsecond " + "x" * 10_000))
    assert "\n" not in message and len(message) <= ConfigError.MESSAGE_LIMIT + 1


@pytest.mark.parametrize(
    "override",
    [
        "algorithms.dpo.beta=" + "x" * 100_000,
        "x" * 100_000 + "=1",
        "task.name=" + "x" * 100_000,
        "only=[" + "x" * 100_000 + "]",
        "model.preset=" + "x" * 100_000,
        "launcher.config=" + "x" * 100_000,
        "evaluation=" + "x" * 100_000,
        "seeds=[0," + "x" * 100_000,
        "x" * 100_000,
        "model.source=path model.name_or_path=" + "x" * 100_000,
    ],
    ids=["float", "key", "task", "only", "preset", "launcher", "section", "unparsable", "no-equals", "path"],
)
def test_a_huge_override_is_named_not_echoed(override):
    with pytest.raises(ConfigError) as caught:
        load_config("tiny", override.split(" "))
    message = str(caught.value)
    assert len(message) < 400 and "\n" not in message and "(100" in message, message


@pytest.mark.parametrize(
    "uri, accepted",
    [
        ("sqlite:////tmp/x/mlflow.db", True),
        ("postgresql+psycopg2://user@db:5432/mlflow", True),
        ("mysql://db/mlflow", True),
        ("http://127.0.0.1:5000", True),
        ("HTTPS://mlflow.example.com", True),
        ("file:///tmp/mlruns", True),
        ("databricks", True),
        ("ftp://nowhere", False),
        ("s3://bucket/prefix", False),
        ("http://", False),
        ("sqlite://", False),
    ],
)
def test_tracking_uri_schemes_mlflow_can_keep_runs_in(uri, accepted):
    if accepted:
        assert load_config("tiny", [f"tracking.uri={uri}"]).suite.tracking.uri == uri
    else:
        with pytest.raises(ConfigError, match="'tracking.uri'"):
            load_config("tiny", [f"tracking.uri={uri}"])


def test_an_empty_only_is_refused_on_the_command_line_and_in_a_suite_file(tmp_path):
    with pytest.raises(ConfigError, match="'only' is empty: name at least one algorithm"):
        load_config("tiny", ["only=[]"])
    suite = tmp_path / "mine.yaml"
    suite.write_text("task: {name: synthetic_reviews}\nalgorithms: {dpo: {}, grpo: {}}\nonly: []\n")
    with pytest.raises(ConfigError, match=r"'only' is empty: .*\(dpo, grpo\), or leave it out"):
        load_config(str(suite))
    assert load_config("tiny").selected_arms == list(load_config("tiny").algorithms)  # left out: all


def test_a_suite_file_that_repeats_a_key_is_refused(tmp_path):
    suite = tmp_path / "twice.yaml"
    suite.write_text("task: {name: synthetic_reviews}\nalgorithms: {dpo: {}}\nseeds: [0]\nseeds: [1]\n")
    with pytest.raises(ConfigError, match=r"twice.yaml' line 4 is not valid YAML: key 'seeds' appears twice"):
        load_config(str(suite))


@pytest.mark.parametrize(
    "overrides",
    [
        [],
        ["only=[dpo]"],
        ["seeds=[0,1]", "executor=ray", "tracking.uri=http://127.0.0.1:5000"],
        [
            "sweep.algorithms.dpo.beta=[0.03,0.3]",
            "sweep.algorithms.dpo.learning_rate=[1e-4]",
            "only=['dpo@beta=0.3,learning_rate=0.0001',ppo]",
        ],
    ],
)
def test_the_resolved_yaml_loads_back_as_itself(tmp_path, overrides):
    """Stages reload the invocation's resolved YAML: every check added for a user's input must pass it."""
    config = load_config("tiny", overrides)
    resolved = tmp_path / "resolved.yaml"
    resolved.write_text(config.to_yaml())
    assert fingerprint(load_config(str(resolved)).to_dict()) == fingerprint(config.to_dict())


def test_no_task_option_is_called_name_which_names_the_task_itself():
    """`task: {name: gsm8k, ...}`: an option called `name` could never be set from a suite and would replace
    the task's name in the resolved config (and so break every stage that reloads it)."""
    import dataclasses

    from harness.registry import TASKS

    for entry in TASKS.entries():
        fields = {field.name for field in dataclasses.fields(TASKS.get(entry.name).Config)}
        assert "name" not in fields, f"task '{entry.name}' has an option called 'name'"


@pytest.mark.parametrize("suite", suite_names())
def test_a_resolved_suite_reloads_as_itself(suite, tmp_path):
    """Every stage loads the resolved config the driver wrote: it must resolve to the same hash."""
    from harness.config import fingerprint, load_config

    config = load_config(suite)
    path = tmp_path / "resolved.yaml"
    path.write_text(config.to_yaml())
    assert fingerprint(load_config(str(path)).to_dict()) == fingerprint(config.to_dict())


# -- sweeps -----------------------------------------------------------------------------------------------


def test_a_sweep_makes_one_arm_per_point_with_its_value_in_the_config_and_the_hash():
    from harness.plan import build_plan

    only = "only=[dpo,grpo,ppo]"
    plain = load_config("tiny", [only])
    swept = load_config(
        "tiny",
        [
            "sweep.algorithms.dpo.beta=[0.03,0.1]",
            "sweep.algorithms.dpo.batch_size=[8,16]",
            "sweep.algorithms.ppo.kl_coef=[0.1,0.2]",
            only,
        ],
    )
    # One algorithm's keys form a grid (in the order listed); another algorithm's sweep is independent of it.
    assert swept.selected_arms == [
        "dpo@beta=0.03,batch_size=8",
        "dpo@beta=0.03,batch_size=16",
        "dpo@beta=0.1,batch_size=8",
        "dpo@beta=0.1,batch_size=16",
        "grpo",
        "ppo@kl_coef=0.1",
        "ppo@kl_coef=0.2",
    ]
    assert swept.arms["dpo@beta=0.03,batch_size=16"].beta == 0.03
    assert swept.arms["dpo@beta=0.03,batch_size=16"].batch_size == 16
    assert swept.arms["ppo@kl_coef=0.2"].kl_coef == 0.2
    assert swept.arms["ppo@kl_coef=0.2"].clip_epsilon == plain.algorithms["ppo"].clip_epsilon  # the rest as set

    def cell_hashes(config):
        return {stage.arm: stage.hash for stage in build_plan(config).stages if stage.kind == "evaluate"}

    plain_hashes, swept_hashes = cell_hashes(plain), cell_hashes(swept)
    assert len(set(swept_hashes.values())) == len(swept_hashes)  # every point its own cell
    # An unswept algorithm keeps the hash (and so the run folders) it had without a sweep. A point equal to the
    # suite's own value is still its own arm: its name, hence its hash, says it was a sweep point.
    assert swept_hashes["grpo"] == plain_hashes["grpo"] and swept_hashes["sft"] == plain_hashes["sft"]
    assert swept_hashes["ppo@kl_coef=0.2"] != plain_hashes["ppo"]


def test_a_sweep_written_in_a_suite_file_equals_the_command_line_form(tmp_path):
    suite = tmp_path / "frontier.yaml"
    suite.write_text(
        "task: {name: synthetic_reviews}\nalgorithms: {dpo: {}, ppo: {}}\nsweep:\n  algorithms.dpo.beta: [0.03, 0.3]\n"
    )
    from_file = load_config(str(suite))
    from_command_line = load_config(str(tmp_path / "frontier.yaml"), ["sweep.algorithms.dpo.beta=[0.03,0.3]"])
    assert from_file.selected_arms == ["dpo@beta=0.03", "dpo@beta=0.3", "ppo"]
    assert fingerprint(from_file.to_dict()) == fingerprint(from_command_line.to_dict())
    # The command line replaces the file's list for that key (one more point here), and adds new keys.
    widened = load_config(
        str(suite), ["sweep.algorithms.dpo.beta=[0.03,0.3,1.0]", "sweep.algorithms.ppo.kl_coef=[0.1]"]
    )
    assert widened.selected_arms == ["dpo@beta=0.03", "dpo@beta=0.3", "dpo@beta=1.0", "ppo@kl_coef=0.1"]


@pytest.mark.parametrize(
    "only, arms",
    [
        ("[dpo]", ["dpo@beta=0.03", "dpo@beta=0.3"]),
        ("[dpo@beta=0.3,grpo]", ["dpo@beta=0.3", "grpo"]),
    ],
)
def test_only_selects_arms_by_algorithm_or_by_point(only, arms):
    config = load_config("tiny", ["sweep.algorithms.dpo.beta=[0.03,0.3]", f"only={only}"])
    assert config.selected_arms == arms


@pytest.mark.parametrize(
    "override, message",
    [
        (
            "sweep.sampling.temperature=[0.7,1.0]",
            "'sweep.sampling.temperature': only algorithm options (algorithms.<name>.<option>) can be swept",
        ),
        (
            "sweep.algorithms.dpo.bta=[0.1]",
            "'sweep.algorithms.dpo.bta': unknown key 'algorithms.dpo.bta'; did you mean 'beta'?",
        ),
        (
            "sweep.algorithms.dpx.beta=[0.1]",
            "'sweep.algorithms.dpx.beta': the suite does not run 'dpx'; did you mean 'dpo'?",
        ),
        ("sweep.algorithms.dpo.beta=0.1", "'sweep.algorithms.dpo.beta' must be a non-empty list of values"),
        ("sweep.algorithms.dpo.beta=[]", "'sweep.algorithms.dpo.beta' must be a non-empty list of values"),
        ("sweep.algorithms.dpo.beta=[0.1,0.1]", "'sweep.algorithms.dpo.beta' lists a value twice"),
        ("sweep.algorithms.dpo.beta=[-1]", "sweep point dpo@beta=-1: 'algorithms.dpo.beta' must be > 0"),
        ("sweep.algorithms.dpo.beta=[nan]", "sweep point dpo@beta=nan: 'algorithms.dpo.beta' must be a finite number"),
        ("sweep.algorithms.dpo.beta=[abc]", "sweep point dpo@beta=abc: bad value for 'algorithms.dpo.beta'"),
        (
            "sweep.algorithms.dpo.pairs_source=[a/b]",
            "'sweep.algorithms.dpo.pairs_source': value 'a/b' must be a number, a boolean or a plain word",
        ),
        ("sweep=3", "'sweep' must be a mapping"),
        (
            "sweep.algorithms.dpo.beta=[1,1.0]",
            "'sweep' gives dpo@beta=1.0 twice (written dpo@beta=1 and dpo@beta=1.0): list each value once",
        ),
    ],
)
def test_a_bad_sweep_is_refused_in_one_line_naming_it(override, message):
    with pytest.raises(ConfigError) as error:
        load_config("tiny", [override])
    assert message in str(error.value) and "\n" not in str(error.value)


def _evaluate_hashes(config) -> dict[str, str]:
    from harness.plan import build_plan

    return {stage.arm: stage.hash for stage in build_plan(config).stages if stage.kind == "evaluate"}


def test_a_sweep_value_spelled_three_ways_in_a_file_or_on_the_command_line_is_one_arm_with_one_hash(tmp_path):
    """PyYAML reads `1e-1` (no dot) as the string "1e-1", `1.0e-1` and `0.1` as the float 0.1; OmegaConf reads
    all three as 0.1 on the command line. The arm is named from the validated float, so all five are one arm,
    one cell hash, one resolved config."""
    configs = []
    for spelling in ("1e-1", "1.0e-1", "0.1"):
        suite = tmp_path / spelling / "frontier.yaml"  # one suite name: the name is part of the resolved config
        suite.parent.mkdir()
        suite.write_text(
            f"task: {{name: synthetic_reviews}}\nalgorithms: {{dpo: {{}}}}\n"
            f"sweep:\n  algorithms.dpo.beta: [{spelling}, 0.3]\n"
        )
        configs.append(load_config(str(suite)))
    configs += [
        load_config(str(suite), [f"sweep.algorithms.dpo.beta=[{spelling},0.3]"]) for spelling in ("1e-1", "1.0e-1")
    ]
    for config in configs:
        assert config.selected_arms == ["dpo@beta=0.1", "dpo@beta=0.3"]
        assert config.arms["dpo@beta=0.1"].beta == 0.1
        assert config.suite.sweep == {"algorithms.dpo.beta": [0.1, 0.3]}  # the typed values, not their spelling
    assert len({json.dumps(_evaluate_hashes(config), sort_keys=True) for config in configs}) == 1
    assert len({fingerprint(config.to_dict()) for config in configs}) == 1


def test_an_arm_is_named_by_the_validated_value_and_canonical_names_keep_their_hash():
    """A float option written as an integer reads as a float (1 -> 1.0: that arm's name and hash change from
    the integer spelling's); a value already written as Python writes it keeps its name, so tiny-frontier's arms
    keep their run folders."""
    swept = load_config(
        "tiny", ["sweep.algorithms.dpo.beta=[1,0.3]", "sweep.algorithms.ppo.kl_coef=[1e-4]", "only=[dpo,ppo]"]
    )
    assert swept.selected_arms == ["dpo@beta=1.0", "dpo@beta=0.3", "ppo@kl_coef=0.0001"]
    frontier = load_config("tiny-frontier")
    for key in frontier.suite.sweep:
        algorithm, option = key.split(".")[1:]
        written = read_yaml(frontier.suite_file)["sweep"][key]
        assert [f"{algorithm}@{option}={value}" for value in written] == [
            arm for arm in frontier.arms if arm.startswith(algorithm + "@")
        ]


def test_only_naming_a_point_in_another_spelling_selects_its_arm():
    config = load_config("tiny", ["sweep.algorithms.dpo.beta=[0.1,0.3]", "only=['dpo@beta=1e-1',grpo]"])
    assert config.selected_arms == ["dpo@beta=0.1", "grpo"]


def test_only_naming_an_unknown_point_is_refused():
    with pytest.raises(
        ConfigError, match=r"'only' names 'dpo@beta=9', which suite 'tiny' does not run; .*dpo@beta=0.3"
    ):
        load_config("tiny", ["sweep.algorithms.dpo.beta=[0.03,0.3]", "only=[dpo@beta=9]"])


@pytest.mark.parametrize(
    "override, message",
    [
        ("algorithms.dpo.loss_type=sigmoidd", "'algorithms.dpo.loss_type' must be one of TRL 1.16's DPO losses"),
        ("algorithms.dpo.label_smoothing=0.1", "'algorithms.dpo.label_smoothing' is ignored by TRL's 'sigmoid' loss"),
        ("algorithms.grpo.lr_scheduler=foo", "'algorithms.grpo.lr_scheduler' must be a transformers scheduler"),
        ("algorithms.kto.lr_scheduler=foo", "'algorithms.kto.lr_scheduler' must be a transformers scheduler"),
        (
            "lora.stages=[dpoo]",
            "'lora.stages' names 'dpoo', an unknown stage; must be algorithms, sft or an algorithm that "
            "trains; did you mean 'dpo'?",
        ),
        ("lora.stages=[best_of_n]", "'lora.stages' names 'best_of_n', which trains no policy weights"),
        ("algorithms.best_of_n.n=0", "'algorithms.best_of_n.n' must be >= 1"),
    ],
)
def test_what_trl_would_refuse_mid_run_is_refused_at_validation(override, message):
    with pytest.raises(ConfigError) as error:
        load_config("tiny", [override])
    assert message in str(error.value)


def test_a_judge_or_a_gold_model_on_a_task_without_gold_is_refused_or_allowed_as_it_should_be():
    with pytest.raises(ConfigError, match="'judge.kind' is gold, but task 'imdb' has no gold reward"):
        load_config("imdb-gpt2", ["judge.kind=gold"])
    # A held-out RM makes the gold judge possible on a task without gold.
    load_config("imdb-gpt2", ["judge.kind=gold", "gold.source=reward_model", "gold.name_or_path=org/held-out-rm"])


def test_gold_and_judge_settings_join_cell_hashes_only_when_set_and_a_trained_judge_is_its_own_stage():
    from harness.plan import build_plan

    def hashes(overrides):
        plan = build_plan(load_config("tiny", ["seeds=[0]", "only=[dpo]", *overrides]))
        return {stage.id: stage.hash for stage in plan.stages}, plan

    plain, _ = hashes(["judge.kind=none"])  # tiny itself trains a judge
    gold_judge, _ = hashes(["judge.kind=gold"])
    trained, plan = hashes(["judge.kind=trained"])
    assert plain["train:dpo-s0"] != gold_judge["train:dpo-s0"] != trained["train:dpo-s0"]
    assert plain["sft-s0"] == gold_judge["sft-s0"] == trained["sft-s0"]  # the prepared chain is untouched
    assert "judge-s0" not in plain and "judge-s0" in trained
    evaluations = [stage for stage in plan.stages if stage.kind == "evaluate"]
    assert all("judge-s0" in stage.waits_on for stage in evaluations)
    assert not any("judge-s0" in stage.waits_on for stage in plan.stages if stage.kind == "train")
    # The judge learns from the task data alone: another SFT setting leaves it as it was.
    other_sft, _ = hashes(["judge.kind=trained", "sft.epochs=1"])
    assert other_sft["judge-s0"] == trained["judge-s0"] and other_sft["sft-s0"] != trained["sft-s0"]
