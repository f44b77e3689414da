"""The record schema: every name the harness writes into MLflow and its run folders, defined once.

Writers (the pipeline, the stages, `harness.tracking`) and readers (the report, the leaderboard) import these
names; none of them spells a tag, a metric prefix or an experiment name as a literal.

- Experiments: ``harness/<suite>`` holds a parent run per `harness run` (kind ``invocation``) and a child
  run per cell (kind ``cell``).
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

# -- tags -------------------------------------------------------------------------------------------------

TAG_KIND = "harness.kind"  # one of the KIND_* values
KIND_INVOCATION = "invocation"
KIND_CELL = "cell"
KIND_LEADERBOARD = "leaderboard"

TAG_SUITE = "harness.suite"
TAG_ALGORITHM = "harness.algorithm"
TAG_SEED = "harness.seed"
TAG_CELL = "harness.cell"  # "<algorithm>-s<seed>"
TAG_CELL_HASH = "harness.cell_hash"
TAG_STATUS = "harness.status"  # one of the STATUS_* values
TAG_FAILURE = "harness.failure"  # a failed cell's one-line reason
TAG_GENERATOR = "harness.generator"
TAG_TRAINING_REWARD = "harness.training_reward"
TAG_PROMPT_FORMAT = "harness.prompt_format"
TAG_BLEU_SIGNATURE = "harness.bleu_signature"
TAG_CONFIG_HASH = "harness.config_hash"  # on the invocation: the whole resolved config
TAG_FAILED_CELLS = "harness.failed_cells"  # on the invocation: how many of its cells failed
TAG_CELL_RUNS = "harness.cell_runs"  # on the invocation: comma-separated run ids of the cells it used
TAG_EXECUTOR = "harness.executor"  # on the invocation: local, local x<N> or ray
PARENT_RUN_TAG = "mlflow.parentRunId"  # MLflow's own: nests a cell under its invocation in the UI

STATUS_RUNNING = "running"
STATUS_COMPLETE = "complete"
STATUS_FAILED = "failed"
STATUS_KILLED = "killed"

# -- metrics and artifacts --------------------------------------------------------------------------------

TRAIN_PREFIX = "train/"  # per optimizer step (or update), logged by the algorithm
EVAL_PREFIX = "eval/"  # the evaluator's summary; intermediate checkpoints at their training step
COST_PREFIX = "cost/"  # a cell's actual spend
PREPARE_PREFIX = "prepare/"  # SFT and reward-model training curves (on the invocation) and RM accuracy
SAMPLES_ARTIFACT = "eval/samples.jsonl"

# -- the identity of a cell: which config sections its hash covers ---------------------------------------

# Per seed, in order: each prepared stage's hash covers the one before it and these sections.
PREPARE_SECTIONS = {
    "task": ("task",),
    "base": ("model",),
    "sft": ("sft", "precision"),  # plus lora when lora.stages has sft
    "reward_model": ("reward_model", "precision"),
}
# The SFT baseline cell: the prepared chain, then how it is evaluated.
BASELINE_CELL_SECTIONS = ("evaluation",)
# A trained cell: the prepared chain, algorithms.<name>, these sections, and lora when the algorithm uses it.
TRAINED_CELL_SECTIONS = ("sampling", "reward", "budget", "evaluation", "precision")
