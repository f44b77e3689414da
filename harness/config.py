"""Configuration: dataclasses are the single source of defaults and documentation.

Precedence, lowest first: dataclass defaults (an algorithm variant's Preset values over its base's Config
defaults, harness/algorithms/spec.py), presets in `configs/` (`configs/models/<preset>.yaml` when `model.preset`
names one), the suite file, and the command line's `key=value` overrides (OmegaConf dotlist). Unknown keys,
wrong types and out-of-range values raise `ConfigError` with a one-line message naming the key and, where one
is close, a suggestion.

Only OmegaConf and PyYAML are imported here, so `harness validate` answers at once.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness import record
from harness.algorithms.spec import algorithm
from harness.errors import ConfigError, require, shown
from harness.registry import ALGORITHMS, GENERATORS, TASKS, did_you_mean

REPO_ROOT = Path(__file__).resolve().parent.parent
SUITES_DIR = REPO_ROOT / "suites"
CONFIGS_DIR = REPO_ROOT / "configs"


PATH_LIMIT = 200  # a real path may be long; a 100 kB "path" is still not echoed


def _is_file(path: Path) -> bool:
    """Path.is_file, but False for a name the OS refuses outright (too long, a NUL byte) instead of raising."""
    try:
        return path.is_file()
    except (OSError, ValueError):
        return False


def _is_dir(path: Path) -> bool:
    try:
        return path.is_dir()
    except (OSError, ValueError):
        return False


def _folder_name(name: str) -> bool:
    """A suite name becomes the folder <output_dir>/<name>: one path component, printable, of sane length."""
    return (
        bool(name.strip())
        and name not in (".", "..")
        and "/" not in name
        and "\\" not in name
        and name.isprintable()
        and len(name) <= 200
    )


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
        require(
            self.architecture in BUILD_ARCHITECTURES,
            "model.architecture",
            f"must be one of {', '.join(BUILD_ARCHITECTURES)};{did_you_mean(self.architecture, BUILD_ARCHITECTURES)}".rstrip(
                ";"
            ),
        )
        yaml_boolean = " (YAML reads on/off/yes/no as booleans)" if self.chat_template in ("True", "False") else ""
        require(
            self.chat_template in CHAT_TEMPLATE_MODES,
            "model.chat_template",
            f"must be one of {', '.join(CHAT_TEMPLATE_MODES)}, got {shown(self.chat_template)}{yaml_boolean}",
        )
        require(
            not self.system_prompt or self.chat_template != "never",
            "model.system_prompt",
            "needs a chat template to go in (model.chat_template is never)",
        )
        require(
            self.source == "build" or bool(self.name_or_path),
            "model.name_or_path",
            "is required when source is path or hub",
        )
        if self.source == "path":
            folder = Path(self.name_or_path)
            require(_is_dir(folder), "model.name_or_path", f"'{shown(folder, PATH_LIMIT)}' is not a folder")
            require(
                _is_file(folder / "config.json"),
                "model.name_or_path",
                f"'{shown(folder, PATH_LIMIT)}' is not a Hugging Face model folder (no config.json)",
            )
            require(
                any(folder.glob("*.safetensors")),
                "model.name_or_path",
                f"'{shown(folder, PATH_LIMIT)}' has no .safetensors weights (pickled checkpoints are never loaded)",
            )
        for key in ("n_layer", "n_embd", "n_head", "max_positions"):
            require(getattr(self, key) > 0, f"model.{key}", "must be > 0")
        require(self.n_embd % self.n_head == 0, "model.n_embd", "must be divisible by model.n_head")


EVERY_ALGORITHM = "algorithms"  # in lora.stages: every algorithm that trains the policy


def trains_with_adapters(stage: str) -> bool:
    """Whether `lora.stages` may name `stage`: SFT, or a registered algorithm that trains the policy (an
    inference-time method such as best-of-n has no weights to adapt)."""
    return stage == "sft" or (stage in ALGORITHMS and algorithm(stage).spec.trains_policy)


@dataclass
class LoraConfig:
    enabled: bool = False
    # train low-rank adapters (Hu et al. 2021, arXiv:2106.09685; peft) instead of every weight in the stages
    # below; each checkpoint is merged into a standard full model, its adapter kept beside it in adapter/
    stages: list[str] = field(default_factory=lambda: [EVERY_ALGORITHM])
    # trainings that use adapters: "algorithms" (every algorithm that trains), sft, or named algorithms (the
    # reward model and PPO's critic train fully); one setting for every compared algorithm, so none gets more
    # capacity than another
    r: int = 16
    # adapter rank
    alpha: float = 32.0
    # scaling numerator: the update is (alpha / r) * B A
    dropout: float = 0.0
    # off like every other dropout (PPO.md §2.1): a random policy breaks the ratio = 1 check at each update's start;
    # PPO and REINFORCE++ turn it off whatever is set here (their old and new log-probs must come from one network)
    target_modules: list[str] = field(default_factory=lambda: ["all-linear"])
    # module names to adapt; ["all-linear"] = every linear layer but the output head (QLoRA's choice)

    def __post_init__(self):
        for stage in self.stages:
            if stage != EVERY_ALGORITHM and not trains_with_adapters(stage):
                allowed = [EVERY_ALGORITHM, "sft", *(name for name in ALGORITHMS.names() if trains_with_adapters(name))]
                what = "which trains no policy weights" if stage in ALGORITHMS else "an unknown stage"
                raise ConfigError(
                    f"'lora.stages' names '{shown(stage)}', {what}; must be algorithms, sft or an "
                    f"algorithm that trains;{did_you_mean(stage, allowed)}".rstrip(";")
                )
        require(self.r > 0, "lora.r", "must be > 0")
        require(self.alpha > 0, "lora.alpha", "must be > 0")
        require(0 <= self.dropout < 1, "lora.dropout", "must be in [0, 1)")
        require(len(self.target_modules) > 0, "lora.target_modules", "must name at least one module (or all-linear)")

    def for_stage(self, stage: str) -> dict | None:
        """This section as a dict when `stage` (sft or an algorithm's name) trains adapters, else None: what a
        stage's hash includes."""
        every_algorithm = EVERY_ALGORITHM in self.stages and stage != "sft" and trains_with_adapters(stage)
        if not self.enabled or not (stage in self.stages or every_algorithm):
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
        require(
            self.source == "train" or bool(self.name_or_path),
            "reward_model.name_or_path",
            "is required when source is path or hub",
        )
        if self.source == "path":
            require(
                _is_file(Path(self.name_or_path) / "config.json"),
                "reward_model.name_or_path",
                f"'{shown(self.name_or_path, PATH_LIMIT)}' is not a Hugging Face model folder (no config.json)",
            )
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


ROLLOUT_GENERATORS = ("hf", "vllm", "auto")


@dataclass
class RolloutsConfig:
    generator: str = "auto"
    # who samples the online algorithms' training rollouts: "hf" (transformers generate()), "vllm" (a vLLM engine
    # colocated with training: TRL's for grpo and its variants, rloo and online_dpo, which needs CUDA; the
    # harness's own for ppo and reinforce_pp), or "auto" (vllm when the suite runs on CUDA and vllm is installed,
    # else hf); the resolved value is tagged on each cell (harness.generation.rollouts)

    def __post_init__(self):
        require(
            self.generator in ROLLOUT_GENERATORS,
            "rollouts.generator",
            f"must be one of {', '.join(ROLLOUT_GENERATORS)};{did_you_mean(self.generator, ROLLOUT_GENERATORS)}".rstrip(
                ";"
            ),
        )


GOLD_SOURCES = ("task", "reward_model")


@dataclass
class GoldConfig:
    source: str = "task"
    # what the evaluator calls gold: "task" (the task's own exact reward where it has one: tiny, GSM8K, IMDB)
    # or "reward_model" (a larger held-out reward model that no algorithm trains on; the report calls it
    # "held-out RM" and keeps it apart from the proxy)
    name_or_path: str = ""
    # source reward_model: a sequence-classifier folder or Hub id (e.g. Skywork/Skywork-Reward-V2-Llama-3.1-8B)
    score_index: int = 0
    # which output logit is the reward (0 for a scalar reward model)
    trust_remote_code: bool = False
    # never execute code shipped with a checkpoint unless asked

    def __post_init__(self):
        require(
            self.source in GOLD_SOURCES,
            "gold.source",
            f"must be one of {', '.join(GOLD_SOURCES)};{did_you_mean(self.source, GOLD_SOURCES)}".rstrip(";"),
        )
        require(
            self.source == "task" or bool(self.name_or_path),
            "gold.name_or_path",
            "is required when gold.source is reward_model",
        )
        require(
            self.source == "reward_model" or not self.name_or_path,
            "gold.name_or_path",
            "is only read when gold.source is reward_model",
        )
        if self.name_or_path and _looks_like_path(self.name_or_path):
            require(
                _is_file(Path(self.name_or_path) / "config.json"),
                "gold.name_or_path",
                f"'{shown(self.name_or_path, PATH_LIMIT)}' is not a Hugging Face model folder (no config.json)",
            )
        require(self.score_index >= 0, "gold.score_index", "must be >= 0")

    @property
    def label(self) -> str:
        """What the report and the cell's tag call the gold reward."""
        return "task gold reward" if self.source == "task" else f"held-out RM {self.name_or_path}"


JUDGE_KINDS = ("none", "model", "gold", "trained")
JUDGE_BACKENDS = ("hf", "vllm", "openai")
JUDGES_DIR = CONFIGS_DIR / "judges"


@dataclass
class JudgeTrainingConfig:
    """judge.kind trained: a small causal-LM judge the harness trains on the seed's preference pairs
    (harness/judges/training.py)."""

    epochs: float = 3.0
    learning_rate: float = 2e-3
    # at 1e-3 it starts learning only after about 1.5 epochs (2 epochs stayed at chance on tiny); 2e-3 to 3e-3
    # learn within half an epoch to the same agreement
    batch_size: int = 32
    # comparisons per step: batch_size / 2 pairs, each in both orders side by side
    n_layer: int = 2
    n_embd: int = 64
    held_out_pairs: int = 512
    # at most this many of the task's held-out preference pairs (never trained on), relabelled by the gold reward
    # without noise, on which the report states the trained judge's agreement with gold

    def __post_init__(self):
        require(self.epochs > 0, "judge.training.epochs", "must be > 0")
        require(self.learning_rate > 0, "judge.training.learning_rate", "must be > 0")
        require(self.batch_size > 0, "judge.training.batch_size", "must be > 0")
        require(self.n_layer > 0, "judge.training.n_layer", "must be > 0")
        require(self.n_embd > 0, "judge.training.n_embd", "must be > 0")
        require(self.held_out_pairs > 0, "judge.training.held_out_pairs", "must be > 0")


@dataclass
class JudgeConfig:
    kind: str = "none"
    # "none"; "model" (an LLM judge: judge.model through judge.backend); "gold" (the gold reward as the judge:
    # a sanity check that must reproduce win_rate_vs_sft exactly); "trained" (a small judge the harness trains
    # on the suite's preference pairs: the embedded suite's stand-in for an LLM judge)
    model: str = ""
    # kind model: a local causal-LM folder or Hub id (backends hf, vllm) or the endpoint's model name (openai)
    backend: str = "hf"
    # "hf" (transformers forward pass: the two answers' probabilities), "vllm" (one generated token with its
    # log-probabilities), "openai" (any OpenAI-compatible endpoint: `vllm serve`, a hosted API)
    base_url: str = ""
    # backend openai: e.g. http://127.0.0.1:8000/v1
    api_key_env: str = ""
    # backend openai: the name of the environment variable that holds the key (the key is never logged)
    template: str = "generic"
    # configs/judges/<template>.yaml (generic, tldr, hh) or a path to such a file
    vs_sft: bool = True
    # judge each completion against SFT's at the same prompt and sample slot
    vs_reference: bool = True
    # judge each completion against the dataset's reference where the task has one
    batch_size: int = 16
    # comparisons per forward pass or request batch
    max_new_tokens: int = 8
    # text backends: tokens generated for the verdict before it is parsed
    training: JudgeTrainingConfig = field(default_factory=JudgeTrainingConfig)

    def __post_init__(self):
        require(
            self.kind in JUDGE_KINDS,
            "judge.kind",
            f"must be one of {', '.join(JUDGE_KINDS)};{did_you_mean(self.kind, JUDGE_KINDS)}".rstrip(";"),
        )
        require(
            self.backend in JUDGE_BACKENDS,
            "judge.backend",
            f"must be one of {', '.join(JUDGE_BACKENDS)};{did_you_mean(self.backend, JUDGE_BACKENDS)}".rstrip(";"),
        )
        require(self.kind != "model" or bool(self.model), "judge.model", "is required when judge.kind is model")
        require(self.kind == "model" or not self.model, "judge.model", "is only read when judge.kind is model")
        require(
            self.backend != "openai" or self.kind != "model" or bool(self.base_url),
            "judge.base_url",
            "is required with backend openai (e.g. http://127.0.0.1:8000/v1)",
        )
        if self.base_url:
            require(
                self.base_url.startswith(("http://", "https://")),
                "judge.base_url",
                f"must start with http:// or https://, not '{shown(self.base_url)}'",
            )
        if self.api_key_env:
            require(
                self.api_key_env.replace("_", "").isalnum(),
                "judge.api_key_env",
                "must be the name of an environment variable (letters, digits, _), never the key itself: "
                f"the value given ({len(self.api_key_env)} characters) is not repeated here",
            )
        if self.kind == "model" and self.backend != "openai" and _looks_like_path(self.model):
            require(
                _is_file(Path(self.model) / "config.json"),
                "judge.model",
                f"'{shown(self.model, PATH_LIMIT)}' is not a Hugging Face model folder (no config.json)",
            )
        known = sorted(p.stem for p in JUDGES_DIR.glob("*.yaml"))
        require(
            self.template in known or _is_file(Path(self.template)),
            "judge.template",
            f"names unknown template '{shown(self.template)}';{did_you_mean(self.template, known)} "
            f"known: {', '.join(known)} (or a path to a template file)",
        )
        require(
            self.vs_sft or self.vs_reference,
            "judge.vs_sft",
            "and judge.vs_reference are both false: the judge would compare nothing",
        )
        require(self.batch_size > 0, "judge.batch_size", "must be > 0")
        require(self.max_new_tokens > 0, "judge.max_new_tokens", "must be > 0")

    @property
    def enabled(self) -> bool:
        return self.kind != "none"

    @property
    def label(self) -> str:
        """Who judges, as the report and the cell's tag say it."""
        if self.kind == "model":
            return f"{self.model} via {self.backend}"
        if self.kind == "trained":
            return f"a judge trained on the task's preference pairs ({self.training.n_layer} layers x {self.training.n_embd})"
        return {"none": "none", "gold": "the gold reward as judge"}[self.kind]


def _looks_like_path(name: str) -> bool:
    """A local folder rather than a Hub id: absolute, relative with ./ or ../, or existing here."""
    return name.startswith(("/", "./", "../", "~")) or Path(name).exists()


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
    retry_seconds: float = 300.0
    # how long a run waits for a tracking store that stopped answering (a server restarting, a SQLite file
    # locked by another run) before the stage ends with one line; training pauses meanwhile and loses nothing.
    # A store that cannot be reached when the command starts is refused at once.

    def __post_init__(self):
        require(self.retry_seconds >= 0, "tracking.retry_seconds", "must be >= 0 (0 = do not wait)")
        require(
            self.uri == "" or "://" in self.uri or self.uri.startswith("databricks"),
            "tracking.uri",
            f"must be a URI such as sqlite:////abs/mlflow.db or http://host:5000, not '{shown(self.uri)}'",
        )
        if "://" not in self.uri:
            return
        scheme, _, rest = self.uri.partition("://")
        scheme = scheme.lower()
        known = TRACKING_SCHEMES + _tracking_store_plugins()
        require(
            scheme.split("+")[0] in TRACKING_DATABASES or scheme in known,
            "tracking.uri",
            f"has scheme '{shown(scheme)}', which MLflow cannot keep runs in; use one of "
            f"{', '.join(s + '://' for s in TRACKING_DATABASES + known)} (e.g. sqlite:////abs/mlflow.db)",
        )
        if scheme in ("http", "https"):
            require(bool(rest.split("/")[0]), "tracking.uri", f"names no host: use {scheme}://host:port")
        if scheme.split("+")[0] == "sqlite":
            require(
                rest.strip("/") != "",
                "tracking.uri",
                "names no database file (sqlite:// alone is an in-memory store that keeps nothing): "
                "use sqlite:////abs/mlflow.db",
            )


# Where MLflow 3.17 can keep runs (mlflow.tracking._tracking_service.utils._register_tracking_stores): SQLAlchemy
# databases (a driver may follow a "+": postgresql+psycopg2://), a tracking server, a local folder, Databricks;
# a store plugin adds its scheme through the "mlflow.tracking_store" entry point.
TRACKING_DATABASES = ("sqlite", "postgresql", "mysql", "mssql")
TRACKING_SCHEMES = ("http", "https", "file", "databricks", "databricks-uc", "uc")


def _tracking_store_plugins() -> tuple[str, ...]:
    import importlib.metadata

    try:
        return tuple(entry.name for entry in importlib.metadata.entry_points(group="mlflow.tracking_store"))
    except Exception:  # broken package metadata must not make every URI unusable
        return ()


EXECUTORS = ("local", "ray")
# Each worker holds torch, transformers and TRL (about 1 GiB) and a stage's models: past eight the memory grows
# faster than what runs at once, since a plan is rarely wider than its cells of one seed.
MAX_AUTO_WORKERS = 8


@dataclass
class ExecutorConfig:
    name: str = "local"
    # who runs the plan's stages: "local" (this machine) or "ray" (the tasks of a Ray cluster, see `ray:`);
    # on the command line `executor=ray` is short for executor.name=ray
    max_parallel: str = "auto"
    # stages run at once: 1 runs them one after another in this process; N > 1 keeps N worker processes (Ray
    # actors under executor=ray) that hold the heavy imports and take one ready stage after another; "auto"
    # is one per GPU on a CUDA suite, else one per core up to MAX_AUTO_WORKERS (see `workers()`)
    retries: int = 0
    # ray: times a stage whose worker died (killed, out of memory, node lost) is started again; it resumes
    # from its last checkpoint in the same MLflow run. A stage that fails by itself is never retried.
    gpus_per_stage: int = -1
    # GPUs a training or evaluation stage asks for (a training stage under `launcher` asks for
    # launcher.num_processes); -1 = 1 when the suite runs on CUDA (device cuda, or auto with a GPU visible)
    cpus_per_stage: int = 0
    # CPU cores (and torch threads) every stage asks for; 0 = auto: every core for one stage at a time, the
    # cores shared out when stages run side by side, 1 per Ray task. Set it to compare executors bit for bit:
    # float reductions, and so samples, depend on the thread count
    memory_gb: float = 0.0
    # host memory every stage asks for, in GiB (ray schedules by it; 0 = no request)

    def __post_init__(self):
        require(
            self.name in EXECUTORS,
            "executor.name",
            f"must be one of {', '.join(EXECUTORS)};{did_you_mean(self.name, EXECUTORS)}".rstrip(";"),
        )
        if self.max_parallel != "auto" and not self.max_parallel.lstrip("-").isdigit():
            raise ConfigError(
                f"bad value for 'executor.max_parallel': {shown(repr(self.max_parallel))} is not a whole number or auto"
            )
        require(self.max_parallel == "auto" or int(self.max_parallel) >= 1, "executor.max_parallel", "must be >= 1")
        require(self.retries >= 0, "executor.retries", "must be >= 0")
        require(self.gpus_per_stage >= -1, "executor.gpus_per_stage", "must be >= 0 (or -1 for auto)")
        require(self.cpus_per_stage >= 0, "executor.cpus_per_stage", "must be >= 0 (0 = auto)")
        require(self.memory_gb >= 0, "executor.memory_gb", "must be >= 0")

    def workers(self, gpus: int, cores: int) -> int:
        """How many stages run at once on a machine with `gpus` GPUs the suite trains on and `cores` cores.
        auto: one per GPU (a stage takes a whole GPU), else one per core, at most MAX_AUTO_WORKERS."""
        if self.max_parallel != "auto":
            return int(self.max_parallel)
        if gpus:
            return gpus
        return max(1, min(cores // max(1, self.cpus_per_stage), MAX_AUTO_WORKERS))


@dataclass
class RayConfig:
    address: str = "local"
    # "local": a Ray instance on this machine for the length of the run; "auto": the cluster that `ray start`
    # made this machine part of; or "<host>:<port>" of a cluster's head (run folders and the MLflow store
    # must then be reachable from every node: a tracking server, never a SQLite file)

    def __post_init__(self):
        require(bool(self.address.strip()), "ray.address", "must be local, auto or <host>:<port>")


@dataclass
class LauncherConfig:
    num_processes: int = 1
    # processes one training stage runs on, under `accelerate launch` when > 1 (one per GPU on CUDA, gloo
    # processes on the CPU); evaluation always runs in one process
    config: str = "ddp"
    # a preset in configs/accelerate/: ddp, deepspeed-zero2, deepspeed-zero3, fsdp

    def __post_init__(self):
        require(self.num_processes >= 1, "launcher.num_processes", "must be >= 1")
        known = sorted(p.stem for p in (CONFIGS_DIR / "accelerate").glob("*.yaml"))
        require(
            self.config in known,
            "launcher.config",
            f"names unknown preset '{shown(self.config)}';{did_you_mean(self.config, known)} known: {', '.join(known)}",
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
    # run only these algorithms (or sweep arms such as dpo@beta=0.1) of the suite (empty = all); the SFT
    # baseline always runs
    sweep: dict[str, Any] = field(default_factory=dict)
    # {algorithms.<name>.<option>: [values]}: every combination of one algorithm's listed values is its own arm
    # ("dpo@beta=0.03"), a cell per seed; different algorithms' sweeps are independent
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
    rollouts: RolloutsConfig = field(default_factory=RolloutsConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    gold: GoldConfig = field(default_factory=GoldConfig)
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    budget: BudgetConfig = field(default_factory=BudgetConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    executor: ExecutorConfig = field(default_factory=ExecutorConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    launcher: LauncherConfig = field(default_factory=LauncherConfig)

    def __post_init__(self):
        require(len(self.seeds) > 0, "seeds", "must list at least one seed")
        require(len(set(self.seeds)) == len(self.seeds), "seeds", "must not repeat a seed")
        require(all(s >= 0 for s in self.seeds), "seeds", "must be >= 0")
        require(all(s < 2**32 for s in self.seeds), "seeds", "must be < 2**32 (numpy's seed range)")
        require(len(set(self.only)) == len(self.only), "only", "must not name an algorithm twice")
        require(
            _folder_name(self.name),
            "name",
            f"must be usable as one folder name (no '/', not '.' or '..'), not '{shown(self.name)}'",
        )
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
    algorithms: dict[str, Any]  # {algorithm: its Config} as the suite sets it, before any sweep
    arms: dict[str, Any] = field(default_factory=dict)  # {arm: its Config}: an algorithm at one sweep point

    @property
    def selected_arms(self) -> list[str]:
        """The arms this run trains: all, or those `only` names by arm or by algorithm."""
        only = self.suite.only
        return [arm for arm in self.arms if not only or arm in only or record.algorithm_of(arm) in only]

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self.suite)
        data["task"] = {"name": self.task_name, **dataclasses.asdict(self.task)}
        data["algorithms"] = {name: dataclasses.asdict(cfg) for name, cfg in self.algorithms.items()}
        return data

    def to_yaml(self) -> str:
        """The resolved config as a suite file that loads back as itself (same `to_dict`, same hash)."""
        import yaml

        data = self.to_dict()
        if not data.get("only"):  # "all algorithms" is `only` left out: a written `only: []` is refused on load
            data.pop("only", None)
        return yaml.safe_dump(data, sort_keys=False)


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
        if _is_dir(candidate):
            raise ConfigError(f"suite file '{shown(suite, PATH_LIMIT)}' is a folder, not a YAML file")
        if not _is_file(candidate):
            raise ConfigError(f"suite file '{shown(suite, PATH_LIMIT)}' does not exist")
        return candidate.resolve()
    path = SUITES_DIR / f"{suite}.yaml"
    if not _is_file(path):
        raise ConfigError(
            f"unknown suite '{shown(suite)}';{did_you_mean(suite, suite_names())} known: {', '.join(suite_names())}"
        )
    return path


def read_yaml(path: Path) -> dict:
    import yaml

    try:
        with open(path, encoding="utf-8") as handle:
            data = yaml.load(handle, Loader=_unique_key_loader())
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        reason = getattr(error, "problem", None) or getattr(error, "reason", None) or str(error)
        raise ConfigError(f"'{shown(path, PATH_LIMIT)}'{where} is not valid YAML: {shown(reason, 200)}") from None
    except UnicodeDecodeError as error:
        raise ConfigError(
            f"'{shown(path, PATH_LIMIT)}' is not UTF-8 text (byte 0x{error.object[error.start]:02x} at offset {error.start}): "
            "save it as UTF-8"
        ) from None
    except OSError as error:
        raise ConfigError(f"cannot read '{shown(path, PATH_LIMIT)}': {error.strerror}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"'{shown(path, PATH_LIMIT)}' must hold a mapping of keys to values, not {type(data).__name__}"
        )
    return data


def _unique_key_loader():
    """yaml.SafeLoader, except that a mapping that repeats a key is an error: PyYAML silently keeps the last
    one, so a suite with `seeds:` twice would run with whichever came second."""
    import yaml

    class UniqueKeyLoader(yaml.SafeLoader):
        def construct_mapping(self, node, deep=False):
            if isinstance(node, yaml.MappingNode):
                seen = set()
                for key_node, _ in node.value:
                    if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base` merges may override
                        continue
                    key = self.construct_object(key_node, deep=deep)
                    try:
                        repeated = key in seen
                    except TypeError:  # an unhashable key: SafeLoader's own error says so
                        break
                    if repeated:
                        raise yaml.constructor.ConstructorError(
                            None, None, f"key '{shown(key)}' appears twice in one mapping", key_node.start_mark
                        )
                    seen.add(key)
            return super().construct_mapping(node, deep=deep)

    return UniqueKeyLoader


def parse_overrides(overrides: list[str]) -> dict:
    """`key=value` dotlist into a nested dict, with a one-line error for a malformed item."""
    from omegaconf import OmegaConf

    for item in overrides:
        if "=" not in item or item.startswith("="):
            raise ConfigError(f"override '{shown(item)}' is not of the form key=value")
    try:
        return OmegaConf.to_container(OmegaConf.from_dotlist(list(overrides)))
    except Exception:  # name the one item that fails, with the first line of OmegaConf's long grammar error
        for item in overrides:
            try:
                OmegaConf.from_dotlist([item])
            except Exception as error:
                reason = (str(error).splitlines() or [type(error).__name__])[0]
                raise ConfigError(f"cannot parse override '{shown(item)}': {_shorten_quoted(reason)}") from None
        raise ConfigError(f"cannot parse overrides {shown(' '.join(overrides))}") from None


def _shorten_quoted(reason: str) -> str:
    """A library's one-line error with every quoted value in it put through `shown()`."""
    import re

    reason = re.sub(r"'([^']*)'", lambda match: f"'{shown(match.group(1))}'", reason)
    return shown(reason, 300)


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
        raise ConfigError(f"'{prefix.rstrip('.') or 'config'}' must be a mapping, not {shown(repr(data))}")
    types = typing.get_type_hints(schema)
    for key, value in data.items():
        if key not in types:
            raise ConfigError(f"unknown key '{prefix}{shown(key)}';{did_you_mean(key, types)}".rstrip(";"))
        if dataclasses.is_dataclass(types[key]):
            check_keys(types[key], value, f"{prefix}{key}.")


def field_help(schema: type) -> dict[str, str]:
    """{field: its help}: the comment lines written under each field of a Config dataclass, the house
    convention that keeps an option's meaning beside its default (`harness list algorithms <name>` prints it)."""
    import ast
    import inspect

    lines = inspect.getsource(schema).splitlines()
    fields = [
        (node.target.id, node.end_lineno)
        for node in ast.parse("\n".join(lines)).body[0].body
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
    ]
    helps = {}
    for name, last_line in fields:
        comment = []
        for line in lines[last_line:]:  # the lines after the field's own (end_lineno is 1-based)
            if not line.strip().startswith("#"):
                break
            comment.append(line.strip().lstrip("#").strip())
        helps[name] = " ".join(comment)
    return helps


def build(schema: type, data: dict, prefix: str):
    """Validate `data` against `schema` (keys, types, ranges) and return the dataclass instance."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    check_keys(schema, data, prefix)
    try:
        merged = OmegaConf.merge(OmegaConf.structured(schema), data)
    except OmegaConfBaseException as error:
        raise _bad_value(error, prefix) from None
    # Before __post_init__'s range checks, so NaN reads "must be a finite number", not "must be > 0".
    require_finite(OmegaConf.to_container(merged), prefix)
    try:
        return OmegaConf.to_object(merged)
    except ConfigError as error:
        raise ConfigError(_prefixed(str(error), prefix)) from None
    except OmegaConfBaseException as error:
        raise _bad_value(error, prefix) from None


def _bad_value(error, prefix: str) -> ConfigError:
    key = f"{prefix}{error.full_key}" if getattr(error, "full_key", None) else prefix.rstrip(".")
    reason = (str(error).splitlines() or [type(error).__name__])[0]
    if "is not a ListConfig" in reason:  # OmegaConf's wording for a scalar given where a list belongs
        reason = "expected a list such as [0,1,2]"
    return ConfigError(f"bad value for '{shown(key)}': {_shorten_quoted(reason)}")


def require_finite(data: Any, key: str) -> None:
    """Refuse NaN and infinities anywhere in a section, naming the full key: every float field of every
    suite section, task and algorithm config (and any list of floats) is checked here, so a new float key
    is covered without writing a check for it. `key` is the section's prefix ("algorithms.ppo.")."""
    import math

    if isinstance(data, float) and not math.isfinite(data):
        raise ConfigError(f"'{key.rstrip('.')}' must be a finite number, not {data}")
    if isinstance(data, dict):
        for name, value in data.items():
            require_finite(value, f"{key}{name}.")
    elif isinstance(data, (list, tuple)):
        for index, value in enumerate(data):
            require_finite(value, f"{key.rstrip('.')}[{index}].")


def _prefixed(message: str, prefix: str) -> str:
    """Range checks name keys relative to their own section; algorithm and task options need the prefix."""
    if prefix.startswith(("algorithms.", "task.")) and message.startswith("'"):
        return f"'{prefix}{message[1:]}"
    return message


def load_config(suite: str, overrides: list[str] | None = None) -> ResolvedConfig:
    """Resolve a suite (name or path) with `key=value` overrides into a validated ResolvedConfig."""
    path = suite_path(suite)
    suite_data = read_yaml(path)
    override_data = parse_overrides(_short_forms(overrides or []))
    override_data.pop("suite", None)

    suite_data.setdefault("name", path.stem)
    if isinstance(suite_data.get("executor"), str):  # `executor: ray` in a suite file
        suite_data["executor"] = {"name": suite_data["executor"]}
    for layer in (suite_data, override_data):  # dotted or nested, a swept key replaces the suite's list whole
        if isinstance(layer.get("sweep"), dict):
            layer["sweep"] = flatten(layer["sweep"])
    raw = deep_merge(suite_data, override_data)

    # Model preset: configs/models/<preset>.yaml sits between the defaults and the suite's own model values.
    model_raw = raw.get("model") or {}
    if isinstance(model_raw, dict) and model_raw.get("preset"):
        raw["model"] = deep_merge(_preset("models", model_raw["preset"], "model.preset"), model_raw)

    task_raw = raw.pop("task", None)
    algorithms_raw = raw.pop("algorithms", None)
    sweep_raw = raw.pop("sweep", None)
    suite_config = build(SuiteConfig, raw, "")

    task_name, task_config = _build_task(task_raw)
    _check_gold_and_judge(suite_config, task_name)
    algorithms = _build_algorithms(algorithms_raw)
    grid = _sweep_grid(sweep_raw, algorithms)
    arms = _expand_arms(algorithms, grid)
    # The validated values, not their spelling: `1e-1` in a suite file and `0.1` on the command line are one
    # configuration, so one resolved config and one hash.
    suite_config.sweep = _typed_grid(grid, arms)
    if "only" in raw and not suite_config.only:  # given, and empty: not the same as leaving it out (= all)
        raise ConfigError(
            f"'only' is empty: name at least one algorithm of suite '{suite_config.name}' "
            f"({', '.join(algorithms)}), or leave it out to run them all"
        )
    canonical_only = [_canonical_arm(name, algorithms) for name in suite_config.only]
    for name, canonical in zip(suite_config.only, canonical_only):
        if canonical not in algorithms and canonical not in arms:
            names = [*algorithms, *(arm for arm in arms if arm not in algorithms)]
            raise ConfigError(
                f"'only' names '{shown(name)}', which suite '{suite_config.name}' does not run;"
                f"{did_you_mean(name, names)} the suite runs: {', '.join(names)}"
            )
    suite_config.only = canonical_only
    suite_config.task = {"name": task_name}
    suite_config.algorithms = {name: {} for name in algorithms}
    return ResolvedConfig(suite_config, path, task_name, task_config, algorithms, arms)


def _check_gold_and_judge(suite: SuiteConfig, task_name: str) -> None:
    """What gold and judge settings need of the rest of the suite."""
    task_has_gold = TASKS.get(task_name).HAS_GOLD_REWARD
    if suite.reward.source == "gold":
        if suite.gold.source == "reward_model":
            raise ConfigError(
                "'reward.source' is gold, but gold.source is reward_model: a held-out reward model "
                "stays held out (no algorithm may optimise it); use reward.source=proxy"
            )
        if not task_has_gold:
            raise ConfigError(f"'reward.source' is gold, but task '{task_name}' has no gold reward; use proxy")
    if suite.judge.kind == "gold" and not (task_has_gold or suite.gold.source == "reward_model"):
        raise ConfigError(
            f"'judge.kind' is gold, but task '{task_name}' has no gold reward; set gold.source=reward_model "
            "with gold.name_or_path, or use judge.kind=model"
        )


# A sweep value becomes part of an arm's name, hence of folder and MLflow run names.
_SWEEP_VALUE_CHARACTERS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-+_")


def _sweep_grid(sweep_raw: Any, algorithms: dict[str, Any]) -> dict[str, list]:
    """The `sweep` section as {"algorithms.<name>.<option>": [values]}, validated; written in a suite file as
    dotted keys or nested mappings, and on the command line as `sweep.algorithms.dpo.beta=[0.03,0.1]`."""
    if sweep_raw is None:
        return {}
    if not isinstance(sweep_raw, dict):
        raise ConfigError(f"'sweep' must be a mapping of keys to lists of values, not {shown(repr(sweep_raw))}")
    grid = {}
    for key, values in flatten(sweep_raw).items():
        parts = key.split(".")
        if len(parts) != 3 or parts[0] != "algorithms":
            raise ConfigError(
                f"'sweep.{shown(key)}': only algorithm options (algorithms.<name>.<option>) can be swept; a suite-wide "
                "setting changes every cell, so run the suite once per value instead"
            )
        name, option = parts[1], parts[2]
        if name not in algorithms:
            raise ConfigError(
                f"'sweep.{shown(key)}': the suite does not run '{shown(name)}';"
                f"{did_you_mean(name, algorithms)} it runs: {', '.join(algorithms)}"
            )
        fields = [f.name for f in dataclasses.fields(algorithms[name])]
        if option not in fields:
            raise ConfigError(
                f"'sweep.{shown(key)}': unknown key 'algorithms.{name}.{shown(option)}';"
                f"{did_you_mean(option, fields)}".rstrip(";")
            )
        if not isinstance(values, list) or not values:
            raise ConfigError(
                f"'sweep.{key}' must be a non-empty list of values such as [0.03,0.1], not {shown(repr(values))}"
            )
        if len({json.dumps(value, sort_keys=True) for value in values}) != len(values):
            raise ConfigError(f"'sweep.{key}' lists a value twice")
        for value in values:
            if isinstance(value, (dict, list)) or not set(str(value)) <= _SWEEP_VALUE_CHARACTERS:
                raise ConfigError(
                    f"'sweep.{key}': value {shown(repr(value))} must be a number, a boolean or a plain word"
                )
        grid[key] = values
    return grid


def _expand_arms(algorithms: dict[str, Any], grid: dict[str, list]) -> dict[str, Any]:
    """{arm: Config}: each algorithm once per combination of its swept values (itself when not swept), every
    point validated like the algorithm's own options (the error names the sweep)."""
    import itertools

    arms, written_as = {}, {}
    for name, config in algorithms.items():
        keys = [key for key in grid if key.split(".")[1] == name]
        options = [key.split(".")[2] for key in keys]
        for values in itertools.product(*(grid[key] for key in keys)):
            point = dict(zip(options, values))
            written = record.arm_name(name, point)
            try:
                arm_config = build(type(config), {**dataclasses.asdict(config), **point}, f"algorithms.{name}.")
            except ConfigError as error:
                raise ConfigError(f"sweep point {written}: {error}") from None
            arm = _arm_of(name, arm_config, options)
            # Values that differ as written but not as options (1 and 1.0, 0.1 and '0.1') would train one
            # configuration twice, or one point would replace another.
            if arm in arms:
                raise ConfigError(
                    f"'sweep' gives {arm} twice (written {written_as[arm]} and {written}): list each value once"
                )
            arms[arm], written_as[arm] = arm_config, written
    return arms


def _arm_of(algorithm: str, config: Any, options: list[str]) -> str:
    """The arm's name from its validated options: a float reads as Python writes it (0.1, 1.0, 0.0001), so a
    point's name, folders and cell hash do not depend on how the value was spelled (1e-1, 0.10, 1.0e-1)."""
    return record.arm_name(algorithm, {option: getattr(config, option) for option in options})


def _typed_grid(grid: dict[str, list], arms: dict[str, Any]) -> dict[str, list]:
    """The sweep grid with each value as its arms validated it (the string "1e-1" of a suite file becomes 0.1),
    in the order listed. `_expand_arms` refused two spellings of one value, so no value is lost."""
    typed = {}
    for key in grid:
        _, name, option = key.split(".")
        values = [getattr(config, option) for arm, config in arms.items() if record.algorithm_of(arm) == name]
        typed[key] = list(dict.fromkeys(values))
    return typed


def _canonical_arm(name: Any, algorithms: dict[str, Any]) -> Any:
    """An `only` entry that names a sweep point ("dpo@beta=1e-1") as `_arm_of` names it ("dpo@beta=0.1"); an
    algorithm's name, or an entry that does not parse as a valid point, is left as written for the `only` check
    to name."""
    if not isinstance(name, str) or record.ARM_SEPARATOR not in name:
        return name
    algorithm, point_text = name.split(record.ARM_SEPARATOR, 1)
    pairs = [item.split("=", 1) for item in point_text.split(",")]
    if algorithm not in algorithms or any(len(pair) != 2 for pair in pairs):
        return name
    point = dict(pairs)
    try:
        config = build(type(algorithms[algorithm]), {**dataclasses.asdict(algorithms[algorithm]), **point}, "")
    except ConfigError:
        return name
    return _arm_of(algorithm, config, list(point))


def _short_forms(overrides: list[str]) -> list[str]:
    """`executor=ray` is short for `executor.name=ray`, so it combines with `executor.max_parallel=2`."""
    return [f"executor.name={item.split('=', 1)[1]}" if item.startswith("executor=") else item for item in overrides]


def _preset(kind: str, name: str, key: str) -> dict:
    path = CONFIGS_DIR / kind / f"{name}.yaml"
    if not isinstance(name, str) or "/" in name or not _is_file(path):
        known = sorted(p.stem for p in (CONFIGS_DIR / kind).glob("*.yaml"))
        raise ConfigError(
            f"'{key}' names unknown preset '{shown(name)}';{did_you_mean(name, known)} known: {', '.join(known)}"
        )
    return read_yaml(path)


def _lookup(registry, name: Any, key: str, resolve=None):
    """The registry's entry point for `name` (or `resolve(name)`), or a one-line error naming `key` (registry
    messages would echo a name of any length)."""
    if not isinstance(name, str):
        raise ConfigError(
            f"'{key}' must be a {registry.kind} name (see `harness list {registry.kind}s`), not {shown(repr(name))}"
        )
    if name not in registry:
        known = sorted(registry.names())
        raise ConfigError(
            f"'{key}': unknown {registry.kind} '{shown(name)}';{did_you_mean(name, known)} known: {', '.join(known)}"
        )
    return resolve(name) if resolve else registry.get(name)


def _build_task(task_raw: Any) -> tuple[str, Any]:
    if not isinstance(task_raw, dict) or "name" not in task_raw:
        raise ConfigError("'task.name' is required: the suite must say which task it runs (see `harness list tasks`)")
    options = dict(task_raw)
    name = options.pop("name")
    module = _lookup(TASKS, name, "task.name")
    return name, build(module.Config, options, "task.")


def _build_algorithms(algorithms_raw: Any) -> dict[str, Any]:
    if not isinstance(algorithms_raw, dict) or not algorithms_raw:
        raise ConfigError("'algorithms' must name at least one algorithm (see `harness list algorithms`)")
    built = {}
    for name, options in algorithms_raw.items():
        resolved = _lookup(ALGORITHMS, str(name), f"algorithms.{shown(str(name))}", resolve=algorithm)
        if options is not None and not isinstance(options, dict):
            raise ConfigError(f"'algorithms.{name}' must be a mapping of options, not {shown(repr(options))}")
        # A variant's preset values sit between its Config's defaults and the suite's own values.
        built[name] = build(resolved.config_class, deep_merge(resolved.defaults, options or {}), f"algorithms.{name}.")
    return built
