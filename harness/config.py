"""Configuration: dataclasses are the single source of defaults and documentation.

Precedence, lowest first: dataclass defaults, presets in `configs/` (`configs/algorithms/<name>.yaml` for
every algorithm, `configs/models/<preset>.yaml` when `model.preset` names one), the suite file, and the
command line's `key=value` overrides (OmegaConf dotlist). Unknown keys, wrong types and out-of-range values
raise `ConfigError` with a one-line message naming the key and, where one is close, a suggestion.

Only OmegaConf and PyYAML are imported here, so `harness validate` answers at once.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.registry import ALGORITHMS, TASKS, UnknownNameError, did_you_mean

REPO_ROOT = Path(__file__).resolve().parent.parent
SUITES_DIR = REPO_ROOT / "suites"
CONFIGS_DIR = REPO_ROOT / "configs"


class ConfigError(ValueError):
    """Bad configuration: the message is one line and names the culprit key or file."""


def require(condition: bool, key: str, message: str) -> None:
    """Raise ConfigError for `key` unless `condition` holds (used in __post_init__ range checks)."""
    if not condition:
        raise ConfigError(f"'{key}' {message}")


# ---------------------------------------------------------------------------------------------------------
# Sections shared by every suite
# ---------------------------------------------------------------------------------------------------------


BUILD_ARCHITECTURES = ("gpt2", "gpt_neox", "qwen2", "llama")
CHAT_TEMPLATE_MODES = ("auto", "always", "never")


@dataclass
class ModelConfig:
    preset: str = ""
    # name of a file in configs/models/ whose values sit under this section's suite values ("" = none)
    source: str = "build"
    # "build": a tiny GPT-2 built from the task's vocabulary; "path": a local Hugging Face folder; "hub": a Hub id
    name_or_path: str = ""
    # folder or Hub id when source is "path" or "hub"
    n_layer: int = 2
    # transformer blocks (source "build" only)
    n_embd: int = 64
    # hidden size (source "build" only)
    n_head: int = 4
    # attention heads (source "build" only)
    max_positions: int = 64
    # context length in tokens (source "build" only)
    architecture: str = "gpt2"
    # model family built when source is "build": gpt2, gpt_neox (Pythia), qwen2 or llama; a real suite's
    # stand-in uses its model's own family, so LoRA targets, attention and vLLM meet the real module layout
    chat_template: str = "auto"
    # prompts as chat turns: "auto" applies the tokenizer's chat template when it has one, "always" requires
    # one (for source "build": gives the word tokenizer a ChatML template with <|im_end|> as EOS, as
    # Qwen2.5-Instruct has), "never" keeps plain-text prompts (YAML reads on/off as booleans, hence the words)
    system_prompt: str = ""
    # a system message put before every prompt when a chat template is applied ("" = none)
    trust_remote_code: bool = False
    # never execute code shipped with a checkpoint unless asked

    def __post_init__(self):
        require(self.source in ("build", "path", "hub"), "model.source", "must be one of build, path, hub")
        require(self.architecture in BUILD_ARCHITECTURES, "model.architecture",
                f"must be one of {', '.join(BUILD_ARCHITECTURES)};{did_you_mean(self.architecture, BUILD_ARCHITECTURES)}".rstrip(";"))
        yaml_boolean = " (YAML reads on/off/yes/no as booleans)" if self.chat_template in ("True", "False") else ""
        require(self.chat_template in CHAT_TEMPLATE_MODES, "model.chat_template",
                f"must be one of {', '.join(CHAT_TEMPLATE_MODES)}, got {self.chat_template}{yaml_boolean}")
        require(not self.system_prompt or self.chat_template != "never", "model.system_prompt",
                "needs a chat template to go in (model.chat_template is never)")
        require(self.source == "build" or bool(self.name_or_path), "model.name_or_path", "is required when source is path or hub")
        if self.source == "path":
            folder = Path(self.name_or_path)
            require(folder.is_dir(), "model.name_or_path", f"'{folder}' is not a folder")
            require((folder / "config.json").is_file(), "model.name_or_path", f"'{folder}' is not a Hugging Face model folder (no config.json)")
            require(
                any(folder.glob("*.safetensors")),
                "model.name_or_path",
                f"'{folder}' has no .safetensors weights (pickled checkpoints are never loaded)",
            )
        for key in ("n_layer", "n_embd", "n_head", "max_positions"):
            require(getattr(self, key) > 0, f"model.{key}", "must be > 0")
        require(self.n_embd % self.n_head == 0, "model.n_embd", "must be divisible by model.n_head")


LORA_STAGES = ("sft", "dpo", "grpo", "ppo")


@dataclass
class LoraConfig:
    enabled: bool = False
    # train low-rank adapters (Hu et al. 2021, arXiv:2106.09685; peft) instead of every weight in the stages
    # below; each checkpoint is merged into a standard full model, its adapter kept beside it in adapter/
    stages: list[str] = field(default_factory=lambda: ["dpo", "grpo", "ppo"])
    # trainings that use adapters: any of sft, dpo, grpo, ppo (the reward model and PPO's critic train fully);
    # one setting for every compared algorithm, so none gets more capacity than another
    r: int = 16
    # adapter rank
    alpha: float = 32.0
    # scaling numerator: the update is (alpha / r) * B A
    dropout: float = 0.0
    # off like every other dropout (PPO.md §2.1): a random policy breaks the ratio = 1 check at each update's start
    target_modules: list[str] = field(default_factory=lambda: ["all-linear"])
    # module names to adapt; ["all-linear"] = every linear layer but the output head (QLoRA's choice)

    def __post_init__(self):
        for stage in self.stages:
            require(stage in LORA_STAGES, "lora.stages",
                    f"names '{stage}'; must be among {', '.join(LORA_STAGES)};{did_you_mean(stage, LORA_STAGES)}".rstrip(";"))
        require(self.r > 0, "lora.r", "must be > 0")
        require(self.alpha > 0, "lora.alpha", "must be > 0")
        require(0 <= self.dropout < 1, "lora.dropout", "must be in [0, 1)")
        require(len(self.target_modules) > 0, "lora.target_modules", "must name at least one module (or all-linear)")

    def for_stage(self, stage: str) -> dict | None:
        """This section as a dict when `stage` trains adapters, else None: what a stage's hash includes."""
        if not self.enabled or stage not in self.stages:
            return None
        return dataclasses.asdict(self)


@dataclass
class SFTConfig:
    enabled: bool = True
    # fine-tune the base model on the task's SFT corpus before any algorithm (TRL SFTTrainer)
    epochs: float = 3.0
    # passes over the SFT corpus
    learning_rate: float = 3e-3
    # peak learning rate (linear decay)
    batch_size: int = 32
    # (prompt, completion) examples per optimizer step

    def __post_init__(self):
        require(self.epochs > 0, "sft.epochs", "must be > 0")
        require(self.learning_rate > 0, "sft.learning_rate", "must be > 0")
        require(self.batch_size > 0, "sft.batch_size", "must be > 0")


@dataclass
class RewardModelConfig:
    source: str = "train"
    # "train": a scalar head on the SFT model, trained on the task's preference pairs; "path" / "hub": an
    # existing sequence classifier (any tokenizer: texts are decoded and re-encoded with its own)
    name_or_path: str = ""
    # folder or Hub id when source is "path" or "hub"
    score_index: int = 0
    # which output logit is the reward: 0 for a scalar reward model, 1 for the positive class of a
    # two-class sentiment classifier
    trust_remote_code: bool = False
    # never execute code shipped with a checkpoint unless asked
    epochs: float = 2.0
    # passes over the preference pairs (TRL RewardTrainer, Bradley-Terry loss)
    learning_rate: float = 1e-3
    # peak learning rate (linear decay)
    batch_size: int = 32
    # preference pairs per optimizer step
    init_from_sft: bool = True
    # start the reward model's backbone from the SFT policy (a fresh scalar head on top)

    def __post_init__(self):
        require(self.source in ("train", "path", "hub"), "reward_model.source", "must be one of train, path, hub")
        require(self.source == "train" or bool(self.name_or_path), "reward_model.name_or_path", "is required when source is path or hub")
        if self.source == "path":
            require((Path(self.name_or_path) / "config.json").is_file(), "reward_model.name_or_path",
                    f"'{self.name_or_path}' is not a Hugging Face model folder (no config.json)")
        require(self.score_index >= 0, "reward_model.score_index", "must be >= 0")
        require(self.epochs > 0, "reward_model.epochs", "must be > 0")
        require(self.learning_rate > 0, "reward_model.learning_rate", "must be > 0")
        require(self.batch_size > 0, "reward_model.batch_size", "must be > 0")


@dataclass
class SamplingConfig:
    temperature: float = 1.0
    # softmax temperature of on-policy rollouts (GRPO, PPO); the same for every online algorithm
    top_k: int = 0
    # 0 = no top-k truncation: the sampler is the distribution the loss uses (PPO.md §2.2)
    top_p: float = 1.0
    # 1.0 = no nucleus truncation
    max_new_tokens: int = 24
    # longest rollout, in tokens; a completion that reaches it without EOS is truncated

    def __post_init__(self):
        require(self.temperature > 0, "sampling.temperature", "must be > 0")
        require(self.top_k >= 0, "sampling.top_k", "must be >= 0")
        require(0 < self.top_p <= 1, "sampling.top_p", "must be in (0, 1]")
        require(self.max_new_tokens > 0, "sampling.max_new_tokens", "must be > 0")


@dataclass
class RewardConfig:
    source: str = "proxy"
    # what online algorithms optimise: "proxy" (the trained reward model) or "gold" (the task's exact reward,
    # to study over-optimisation of the proxy)
    missing_stop_penalty: float = 1.0
    # subtracted from the training reward of a rollout that ends without EOS (PPO.md §2.3)

    def __post_init__(self):
        require(self.source in ("proxy", "gold"), "reward.source", "must be 'proxy' or 'gold'")
        require(self.missing_stop_penalty >= 0, "reward.missing_stop_penalty", "must be >= 0")


@dataclass
class EvaluationConfig:
    generator: str = "hf"
    # backend that samples completions: "hf", "vllm", or "auto" (vLLM where it is installed and a GPU is
    # present, else transformers); see `harness list generators`
    num_prompts: int = 64
    # held-out prompts scored per checkpoint (0 = all the task has)
    samples_per_prompt: int = 4
    # completions sampled per prompt
    temperature: float = 1.0
    # 1.0 with no truncation is where the KL estimate is the KL of the policy itself (DESIGN §6)
    top_k: int = 0
    # 0 = no top-k truncation
    top_p: float = 1.0
    # 1.0 = no nucleus truncation
    max_new_tokens: int = 24
    # longest completion, in tokens
    batch_size: int = 64
    # prompts per generate() / forward batch
    checkpoints: int = 0
    # intermediate checkpoints of each algorithm to evaluate too, evenly spaced over its training (0 = the
    # final one only): the reward-versus-KL picture becomes a curve per algorithm and seed

    def __post_init__(self):
        from harness.registry import GENERATORS

        known = [*GENERATORS.names(), "auto"]
        require(
            self.generator in known,
            "evaluation.generator",
            f"must be one of {', '.join(known)};{did_you_mean(self.generator, known)}".rstrip(";"),
        )
        require(self.num_prompts >= 0, "evaluation.num_prompts", "must be >= 0")
        require(self.samples_per_prompt > 0, "evaluation.samples_per_prompt", "must be > 0")
        require(self.temperature > 0, "evaluation.temperature", "must be > 0")
        require(self.top_k >= 0, "evaluation.top_k", "must be >= 0")
        require(0 < self.top_p <= 1, "evaluation.top_p", "must be in (0, 1]")
        require(self.max_new_tokens > 0, "evaluation.max_new_tokens", "must be > 0")
        require(self.batch_size > 0, "evaluation.batch_size", "must be > 0")
        require(self.checkpoints >= 0, "evaluation.checkpoints", "must be >= 0")


BUDGET_POLICIES = ("equal_prompts", "equal_completions")


@dataclass
class BudgetConfig:
    policy: str = "equal_prompts"
    # how algorithms are put on equal footing:
    #   "equal_prompts": every algorithm consumes `prompts` training prompts (DPO: one pair per prompt;
    #                    GRPO: one group of G completions per prompt; PPO: one rollout per prompt)
    #   "equal_completions": every algorithm trains on `completions` completions (DPO: a pair is two;
    #                    GRPO: G per prompt; PPO: one per rollout)
    prompts: int = 512
    # training prompts per algorithm under "equal_prompts"
    completions: int = 4096
    # training completions per algorithm under "equal_completions"

    def __post_init__(self):
        require(self.policy in BUDGET_POLICIES, "budget.policy", f"must be one of {', '.join(BUDGET_POLICIES)}")
        require(self.prompts > 0, "budget.prompts", "must be > 0")
        require(self.completions > 0, "budget.completions", "must be > 0")

    def prompts_for(self, completions_per_prompt: int) -> int:
        """Training prompts an algorithm that uses `completions_per_prompt` completions per prompt consumes."""
        if self.policy == "equal_prompts":
            return self.prompts
        return max(1, self.completions // completions_per_prompt)


@dataclass
class TrackingConfig:
    uri: str = ""
    # MLflow tracking URI; "" = a SQLite file sqlite:///<absolute output_dir>/mlflow.db

    def __post_init__(self):
        require(
            self.uri == "" or "://" in self.uri or self.uri.startswith("databricks"),
            "tracking.uri",
            "must be a URI such as sqlite:////abs/mlflow.db or http://host:5000",
        )


@dataclass
class SuiteConfig:
    name: str = ""
    # the suite's name: its MLflow experiment is harness/<name>
    description: str = ""
    # one line shown by `harness list suites`
    seeds: list[int] = field(default_factory=lambda: [0])
    # every algorithm runs once per seed; the seed also drives task data and the SFT and reward models
    only: list[str] = field(default_factory=list)
    # run only these algorithms of the suite (empty = all); the SFT baseline always runs
    output_dir: str = "runs"
    # run folders (checkpoints, samples, completion markers); relative to the current directory
    reports_dir: str = "reports"
    # where `harness report` writes <suite>.md and its plots
    device: str = "auto"
    # "auto" (CUDA when present, else CPU), "cpu" or "cuda"
    precision: str = "fp32"
    # "fp32" or "bf16" (bf16 needs CUDA); the same for every algorithm
    gradient_checkpointing: bool = False
    # recompute activations in the backward pass: less memory, more time (TRL's SFT turns it on by default)
    checkpoint_every: int = 0
    # optimizer steps between resumable training checkpoints (model, optimizer, scheduler, data position and
    # RNG state); 0 = none, so an interrupted training stage starts over
    task: dict[str, Any] = field(default_factory=dict)
    # {name: <task>, ...that task's options}; see `harness list tasks`
    algorithms: dict[str, Any] = field(default_factory=dict)
    # {<algorithm>: {options}}: the algorithms this suite compares
    model: ModelConfig = field(default_factory=ModelConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    reward_model: RewardModelConfig = field(default_factory=RewardModelConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    budget: BudgetConfig = field(default_factory=BudgetConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    def __post_init__(self):
        require(len(self.seeds) > 0, "seeds", "must list at least one seed")
        require(len(set(self.seeds)) == len(self.seeds), "seeds", "must not repeat a seed")
        require(all(s >= 0 for s in self.seeds), "seeds", "must be >= 0")
        require(self.device in ("auto", "cpu", "cuda"), "device", "must be auto, cpu or cuda")
        require(self.precision in ("fp32", "bf16"), "precision", "must be fp32 or bf16")
        require(self.checkpoint_every >= 0, "checkpoint_every", "must be >= 0")


# ---------------------------------------------------------------------------------------------------------
# The resolved configuration
# ---------------------------------------------------------------------------------------------------------


@dataclass
class ResolvedConfig:
    """A suite with every section validated, task and algorithm options as their own dataclasses."""

    suite: SuiteConfig
    suite_file: Path
    task_name: str
    task: Any
    algorithms: dict[str, Any]

    @property
    def selected_algorithms(self) -> list[str]:
        return [name for name in self.algorithms if not self.suite.only or name in self.suite.only]

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self.suite)
        data["task"] = {"name": self.task_name, **dataclasses.asdict(self.task)}
        data["algorithms"] = {name: dataclasses.asdict(cfg) for name, cfg in self.algorithms.items()}
        return data

    def to_yaml(self) -> str:
        import yaml

        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def fingerprint(*parts: Any) -> str:
    """A short stable hash of JSON-able parts: names run folders and MLflow cells by what determines them."""
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def flatten(data: dict, prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1}: the shape MLflow params take."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


# ---------------------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------------------


def suite_names() -> list[str]:
    return sorted(p.stem for p in SUITES_DIR.glob("*.yaml"))


def suite_path(suite: str) -> Path:
    """A suite name in suites/, or a path to a YAML file."""
    candidate = Path(suite)
    if candidate.suffix in (".yaml", ".yml") or "/" in suite:
        if not candidate.is_file():
            raise ConfigError(f"suite file '{suite}' does not exist")
        return candidate.resolve()
    path = SUITES_DIR / f"{suite}.yaml"
    if not path.is_file():
        raise ConfigError(f"unknown suite '{suite}';{did_you_mean(suite, suite_names())} known: {', '.join(suite_names())}")
    return path


def read_yaml(path: Path) -> dict:
    import yaml

    try:
        with open(path) as handle:
            data = yaml.safe_load(handle)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"'{path}'{where} is not valid YAML: {getattr(error, 'problem', error)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"'{path}' must hold a mapping of keys to values, not {type(data).__name__}")
    return data


def parse_overrides(overrides: list[str]) -> dict:
    """`key=value` dotlist into a nested dict, with a one-line error for a malformed item."""
    from omegaconf import OmegaConf

    for item in overrides:
        if "=" not in item or item.startswith("="):
            raise ConfigError(f"override '{item}' is not of the form key=value")
    try:
        return OmegaConf.to_container(OmegaConf.from_dotlist(list(overrides)))
    except Exception as error:  # OmegaConf's grammar errors are long; keep the first line
        raise ConfigError(f"cannot parse overrides {overrides}: {str(error).splitlines()[0]}") from None


def deep_merge(*layers: dict) -> dict:
    merged: dict = {}
    for layer in layers:
        for key, value in layer.items():
            if isinstance(value, dict) and isinstance(merged.get(key), dict):
                merged[key] = deep_merge(merged[key], value)
            else:
                merged[key] = value
    return merged


def check_keys(schema: type, data: Any, prefix: str) -> None:
    """Refuse keys the dataclass does not have, recursively, with a did-you-mean suggestion."""
    import typing

    if not isinstance(data, dict):
        raise ConfigError(f"'{prefix.rstrip('.') or 'config'}' must be a mapping, not {data!r}")
    types = typing.get_type_hints(schema)
    for key, value in data.items():
        if key not in types:
            raise ConfigError(f"unknown key '{prefix}{key}';{did_you_mean(key, types)}".rstrip(";"))
        if dataclasses.is_dataclass(types[key]):
            check_keys(types[key], value, f"{prefix}{key}.")


def build(schema: type, data: dict, prefix: str):
    """Validate `data` against `schema` (keys, types, ranges) and return the dataclass instance."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    check_keys(schema, data, prefix)
    try:
        merged = OmegaConf.merge(OmegaConf.structured(schema), data)
        return OmegaConf.to_object(merged)
    except ConfigError as error:
        raise ConfigError(_prefixed(str(error), prefix)) from None
    except OmegaConfBaseException as error:
        key = f"{prefix}{error.full_key}" if getattr(error, "full_key", None) else prefix.rstrip(".")
        reason = str(error).splitlines()[0]
        if "is not a ListConfig" in reason:  # OmegaConf's wording for a scalar given where a list belongs
            reason = "expected a list such as [0,1,2]"
        raise ConfigError(f"bad value for '{key}': {reason}") from None


def _prefixed(message: str, prefix: str) -> str:
    """Range checks name keys relative to their own section; algorithm and task options need the prefix."""
    if prefix.startswith(("algorithms.", "task.")) and message.startswith("'"):
        return f"'{prefix}{message[1:]}"
    return message


def load_config(suite: str, overrides: list[str] | None = None) -> ResolvedConfig:
    """Resolve a suite (name or path) with `key=value` overrides into a validated ResolvedConfig."""
    path = suite_path(suite)
    suite_data = read_yaml(path)
    override_data = parse_overrides(overrides or [])
    override_data.pop("suite", None)

    suite_data.setdefault("name", path.stem)
    raw = deep_merge(suite_data, override_data)

    # Model preset: configs/models/<preset>.yaml sits between the defaults and the suite's own model values.
    model_raw = raw.get("model") or {}
    if isinstance(model_raw, dict) and model_raw.get("preset"):
        raw["model"] = deep_merge(_preset("models", model_raw["preset"], "model.preset"), model_raw)

    task_raw = raw.pop("task", None)
    algorithms_raw = raw.pop("algorithms", None)
    suite_config = build(SuiteConfig, raw, "")

    task_name, task_config = _build_task(task_raw)
    if suite_config.reward.source == "gold" and not TASKS.get(task_name).HAS_GOLD_REWARD:
        raise ConfigError(f"'reward.source' is gold, but task '{task_name}' has no gold reward; use proxy")
    algorithms = _build_algorithms(algorithms_raw)
    for name in suite_config.only:
        if name not in algorithms:
            raise ConfigError(
                f"'only' names '{name}', which suite '{suite_config.name}' does not run;"
                f"{did_you_mean(name, algorithms)} the suite runs: {', '.join(algorithms)}"
            )
    suite_config.task = {"name": task_name}
    suite_config.algorithms = {name: {} for name in algorithms}
    return ResolvedConfig(suite_config, path, task_name, task_config, algorithms)


def _preset(kind: str, name: str, key: str) -> dict:
    path = CONFIGS_DIR / kind / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in (CONFIGS_DIR / kind).glob("*.yaml"))
        raise ConfigError(f"'{key}' names unknown preset '{name}';{did_you_mean(name, known)} known: {', '.join(known)}")
    return read_yaml(path)


def _build_task(task_raw: Any) -> tuple[str, Any]:
    if not isinstance(task_raw, dict) or "name" not in task_raw:
        raise ConfigError("'task.name' is required: the suite must say which task it runs (see `harness list tasks`)")
    options = dict(task_raw)
    name = options.pop("name")
    try:
        module = TASKS.get(name)
    except UnknownNameError as error:
        raise ConfigError(f"'task.name': {error}") from None
    return name, build(module.Config, options, "task.")


def _build_algorithms(algorithms_raw: Any) -> dict[str, Any]:
    if not isinstance(algorithms_raw, dict) or not algorithms_raw:
        raise ConfigError("'algorithms' must name at least one algorithm (see `harness list algorithms`)")
    built = {}
    for name, options in algorithms_raw.items():
        try:
            module = ALGORITHMS.get(name)
        except UnknownNameError as error:
            raise ConfigError(f"'algorithms.{name}': {error}") from None
        preset_path = CONFIGS_DIR / "algorithms" / f"{name}.yaml"
        preset = read_yaml(preset_path) if preset_path.is_file() else {}
        if options is not None and not isinstance(options, dict):
            raise ConfigError(f"'algorithms.{name}' must be a mapping of options, not {options!r}")
        built[name] = build(module.Config, deep_merge(preset, options or {}), f"algorithms.{name}.")
    return built
