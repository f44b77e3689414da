"""The record schema: every name the harness writes into MLflow and its run folders, defined once.

Writers (the pipeline, the stages, `harness.tracking`) and readers (the report, the leaderboard) import these
names; none of them spells a tag, a metric prefix or an experiment name as a literal.

- Experiments: ``harness/<suite>`` holds a parent run per `harness run` (kind ``invocation``) and a child
  run per cell (kind ``cell``); ``harness/<suite>/leaderboard`` holds one run per (algorithm, configuration)
  (kind ``leaderboard``) with the means over seeds, rewritten by `harness.report.leaderboard_runs`.
- A cell is identified by (algorithm, seed, cell hash). Its hash covers the seed's prepared data and models
  (the `PREPARE_SECTIONS` chain) and the sections in `BASELINE_CELL_SECTIONS` or `TRAINED_CELL_SECTIONS`;
  `harness.plan` computes it, and the report groups seeds of one configuration by the params of the same
  sections.
"""

from __future__ import annotations

# -- experiments ------------------------------------------------------------------------------------------

EXPERIMENT_PREFIX = "harness/"


def experiment_name(suite: str) -> str:
    return f"{EXPERIMENT_PREFIX}{suite}"


def leaderboard_experiment_name(suite: str) -> str:
    return f"{EXPERIMENT_PREFIX}{suite}/leaderboard"


# -- the baseline row: the SFT policy itself, evaluated like every trained checkpoint --------------------

BASELINE = "sft"

# -- arms: an algorithm at one point of a sweep ------------------------------------------------------------
# A suite's `sweep:` grid turns one algorithm into several arms, each its own cell per seed. An arm's name is
# the algorithm's registry name, then ARM_SEPARATOR and the point ("dpo@beta=0.03", "ppo@kl_coef=0.2,lr=...");
# without a sweep the arm is the bare algorithm name, so unswept suites keep their names and hashes. The arm
# name is what TAG_ARM, cell names, run folders and the report's rows carry; TAG_ALGORITHM and TAG_SWEEP_POINT
# split it.
ARM_SEPARATOR = "@"


def arm_name(algorithm: str, point: dict) -> str:
    """ "dpo" for no point, "dpo@beta=0.03" for {"beta": 0.03}; keys in the order the sweep lists them."""
    if not point:
        return algorithm
    return algorithm + ARM_SEPARATOR + ",".join(f"{key}={value}" for key, value in point.items())


def algorithm_of(arm: str) -> str:
    """The registry name of an arm's algorithm ("dpo@beta=0.03" -> "dpo"); BASELINE stays itself."""
    return arm.split(ARM_SEPARATOR, 1)[0]


def sweep_point_of(arm: str) -> str:
    """The arm's sweep point as written in its name ("beta=0.03"), "" when it is not swept."""
    return arm.split(ARM_SEPARATOR, 1)[1] if ARM_SEPARATOR in arm else ""


# The families the report groups algorithms by (each algorithm module's FAMILY is one of them).
FAMILY_OFFLINE_PREFERENCE = "offline preference"
FAMILY_ONLINE_POLICY_GRADIENT = "online policy gradient"
FAMILY_ACTOR_CRITIC = "actor-critic"
FAMILY_ONLINE_PREFERENCE = "online preference"
FAMILY_INFERENCE_TIME = "inference-time"
FAMILIES = (
    FAMILY_OFFLINE_PREFERENCE,
    FAMILY_ONLINE_POLICY_GRADIENT,
    FAMILY_ACTOR_CRITIC,
    FAMILY_ONLINE_PREFERENCE,
    FAMILY_INFERENCE_TIME,
)

# -- tags -------------------------------------------------------------------------------------------------

TAG_KIND = "harness.kind"  # one of the KIND_* values
KIND_INVOCATION = "invocation"
KIND_CELL = "cell"
KIND_LEADERBOARD = "leaderboard"

TAG_SUITE = "harness.suite"
TAG_ARM = "harness.arm"  # the arm: "dpo", or "dpo@beta=0.03" for a sweep point
TAG_ALGORITHM = "harness.algorithm"  # the arm's registry algorithm: "dpo"
TAG_SWEEP_POINT = "harness.sweep_point"  # "beta=0.03"; "" when the algorithm is not swept
# What the algorithm declares (harness.algorithms.spec.AlgorithmSpec), on each cell so that a report is
# rebuilt from MLflow alone, whatever the algorithm modules say today:
TAG_FAMILY = "harness.family"  # its family (one of FAMILIES)
TAG_KL_KNOB = "harness.kl_knob"  # the option a frontier sweeps ("" for the baseline)
TAG_KL_KNOB_RAISES_KL = "harness.kl_knob_raises_kl"  # "true" when a larger value of it allows more KL
TAG_CURVES = "harness.curves"  # its own train/ curves, comma-separated names without the prefix
TAG_DATA = "harness.data"  # one sentence: what it learned from, given its options
# "true" on a cell whose eval/kl is an analytic upper bound, not an estimate (best-of-n: log n - (n-1)/n)
# The stages of the cell that trained LoRA adapters, comma-separated (sft, its algorithm); "" when every weight
# trained. The report reads it, not the lora params, so it never asks an algorithm whether it trains a policy.
TAG_LORA_STAGES = "harness.lora_stages"
TAG_KL_IS_BOUND = "harness.kl_is_bound"
TAG_GOLD = "harness.gold"  # what eval/gold_reward is: the task's own reward or "held-out RM <name>" (GoldConfig.label)
TAG_JUDGE = "harness.judge"  # who judged eval/judge_*: JudgeConfig.label
TAG_SEED = "harness.seed"
TAG_CELL = "harness.cell"  # "<algorithm>-s<seed>"
TAG_CELL_HASH = "harness.cell_hash"
TAG_STATUS = "harness.status"  # one of the STATUS_* values
TAG_FAILURE = "harness.failure"  # a failed cell's one-line reason
TAG_GENERATOR = "harness.generator"
TAG_ROLLOUT_GENERATOR = "harness.rollout_generator"  # who sampled training rollouts: hf, vllm, none (offline)
TAG_TRAINING_REWARD = "harness.training_reward"
TAG_PROMPT_FORMAT = "harness.prompt_format"
TAG_BLEU_SIGNATURE = "harness.bleu_signature"
TAG_CONFIG_HASH = "harness.config_hash"  # on the invocation: the whole resolved config
TAG_FAILED_CELLS = "harness.failed_cells"  # on the invocation: how many of its cells failed
TAG_CELL_RUNS = "harness.cell_runs"  # on the invocation: comma-separated run ids of the cells it used
TAG_EXECUTOR = "harness.executor"  # on the invocation: local, local x<N> or ray
TAG_OWNER = "harness.owner"  # host:pid of the process writing the run; a live owner's run is never closed as stale
# Seconds since the epoch when the process writing the run last said it is alive (refreshed every
# tracking.HEARTBEAT_SECONDS): a run whose beat is fresh is live whichever host looks, and is never closed as stale.
TAG_HEARTBEAT = "harness.heartbeat"
PARENT_RUN_TAG = "mlflow.parentRunId"  # MLflow's own: nests a cell under its invocation in the UI

STATUS_RUNNING = "running"
STATUS_COMPLETE = "complete"
STATUS_FAILED = "failed"
STATUS_KILLED = "killed"

# -- metrics and artifacts --------------------------------------------------------------------------------

TRAIN_PREFIX = "train/"  # per optimizer step (or update), logged by the algorithm
EVAL_PREFIX = "eval/"  # the evaluator's summary; intermediate checkpoints at their training step
COST_PREFIX = "cost/"  # a cell's actual spend, COST_PREFIX + one of the names below
COST_PROMPTS_SEEN = "prompts_seen"
COST_COMPLETIONS_GENERATED = "completions_generated"  # in training
COST_TOKENS_GENERATED = "tokens_generated"  # in training
COST_OPTIMIZER_STEPS = "optimizer_steps"
COST_TRAIN_STEPS = "train_steps"  # the algorithm's own step count at the end: the unit of its snapshots
COST_WALL_TIME_S = "wall_time_s"
COST_PEAK_MEMORY_MB = "peak_memory_mb"
COST_PROCESSES = "processes"  # ranks the training ran on
COST_COMPLETIONS_PER_ANSWER = "completions_per_answer"  # best-of-n: candidates drawn per evaluation answer
COST_EVAL_COMPLETIONS_GENERATED = "eval_completions_generated"  # best-of-n: every candidate drawn in evaluation
# The order the report shows costs in: what was consumed first, then what it cost.
COST_METRICS = (
    COST_PROMPTS_SEEN,
    COST_COMPLETIONS_GENERATED,
    COST_TOKENS_GENERATED,
    COST_OPTIMIZER_STEPS,
    COST_WALL_TIME_S,
    COST_PEAK_MEMORY_MB,
)
PREPARE_PREFIX = "prepare/"  # SFT and reward-model training curves (on the invocation) and RM accuracy
PREPARE_JUDGE_AGREEMENT = "judge_gold_agreement_held_out"  # prepare/<this> on each cell: its seed's trained judge
# against the gold reward on held-out preference pairs (judge.kind trained)
SAMPLES_ARTIFACT = "eval/samples.jsonl"

# train/ metrics every training algorithm logs under the same name and unit, so that curves of different
# algorithms share their axes (each algorithm's own statistics keep their own names beside them):
TRAIN_BUDGET_FRACTION = "budget_fraction"  # the fraction of the cell's budget spent at this step (step / total)
# Online algorithms: the mean over the step's sampled completions of the per-sequence KL estimate to the
# reference, summed over tokens, in nats (the unit of the evaluator's eval/kl).
TRAIN_KL_PER_SEQUENCE = "kl_per_sequence"

# -- the identity of a cell: which config sections its hash covers ---------------------------------------

# Per seed, in order: each prepared stage's hash covers the one before it and these sections.
PREPARE_SECTIONS = {
    "task": ("task",),
    "base": ("model",),
    "sft": ("sft", "precision"),  # plus lora when lora.stages has sft
    "reward_model": ("reward_model", "precision"),
}
# The SFT baseline cell: the prepared chain, then how it is evaluated.
BASELINE_CELL_SECTIONS = ("evaluation", "gold", "judge")
# A trained cell: the prepared chain, algorithms.<name>, these sections, and lora when the algorithm uses it.
TRAINED_CELL_SECTIONS = ("sampling", "rollouts", "reward", "budget", "evaluation", "gold", "judge", "precision")

# The LoRA settings join a hash only where the stage trained adapters (the lora.stages list names it).
LORA_SECTION = "lora"
ALGORITHMS_SECTION = "algorithms"


def _unique(sections) -> tuple[str, ...]:
    return tuple(dict.fromkeys(sections))


def cell_sections(algorithm: str) -> tuple[str, ...]:
    """The config sections (dotted param prefixes, or top-level keys such as ``precision``) whose values make a
    cell of `algorithm` what it is, the seed aside: the prepared chain, then the baseline's or a trained cell's
    own sections. `lora` is not in it: it counts only for the stages that trained adapters (`lora_stages`)."""
    prepared = [section for sections in PREPARE_SECTIONS.values() for section in sections]
    if algorithm == BASELINE:
        return _unique(prepared + list(BASELINE_CELL_SECTIONS))
    return _unique(prepared + list(TRAINED_CELL_SECTIONS) + [f"{ALGORITHMS_SECTION}.{algorithm_of(algorithm)}"])


def lora_stages(algorithm: str) -> tuple[str, ...]:
    """The stages whose LoRA settings a cell of `algorithm` depends on: SFT (it built the base policy), and the
    algorithm's own training."""
    return (BASELINE,) if algorithm == BASELINE else (BASELINE, algorithm_of(algorithm))


def in_section(key: str, section: str) -> bool:
    """Whether the flattened param `key` belongs to `section` ("precision" is itself a key; "reward" does not
    cover "reward_model.*")."""
    return key == section or key.startswith(section + ".")


# -- leaderboard runs: one per (algorithm, configuration), means over seeds, in their own experiment --------

TAG_CONFIG = "harness.config"  # the seed-free configuration key the report groups seeds by
TAG_LEADERBOARD_KEY = "harness.leaderboard_key"  # "<arm>:<config>": the row a re-aggregation updates in place
TAG_CURRENT = "harness.current"  # "true" for the configuration the report shows, "false" for older ones
TAG_INTERVAL = "harness.interval"  # how the row's bounds were obtained: "t over 3 seeds", ...
TAG_REPORTED_PREFIX = "report."  # + metric: "mean ± half-width" as reports/<suite>.md prints it
TAG_HEADLINE = "harness.headline_metric"  # on the leaderboard experiment: the metric it is sorted by
# A leaderboard run's metrics are bare eval metric names (gold_reward), their bounds with these suffixes, the
# seed count, and the mean cost under COST_PREFIX.
CI_LOW_SUFFIX = "_ci_low"
CI_HIGH_SUFFIX = "_ci_high"
SEEDS_METRIC = "seeds"
LEADERBOARD_FIGURES_ARTIFACT_PATH = "figures"

# -- MLflow's own tags and UI conventions -----------------------------------------------------------------

NOTE_TAG = "mlflow.note.content"  # a run's or an experiment's description, shown by the UI
# The experiment kind the UI's kind selector writes. MLflow 3.17.2's UI lets the workflow switch (the URL's
# workflowType, else the browser's remembered choice, default GenAI) decide the landing page instead; the tag is
# set so that the kind reads "Machine learning" wherever a UI does consult it.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND_TRAINING = "custom_model_development"
# The UI's runs page restores a saved view (sort, filter, columns) from the experiment tag
# SHARED_VIEW_TAG_PREFIX + <key> when the URL carries viewStateShareKey=<key>; the UI lists it under "Views".
SHARED_VIEW_TAG_PREFIX = "mlflow.sharedViewState."
LEADERBOARD_VIEW_KEY = "leaderboard"
CELLS_VIEW_KEY = "cells"  # on the suite's experiment: every cell run, flat, by the headline metric
WORKFLOW_TYPE_TRAINING = "machine_learning"  # the URL's workflowType that opens the runs table
