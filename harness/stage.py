"""One stage of a plan, one command: `python -m harness.stage <stage.json>`.

Whoever runs a stage runs this: the local executor in its own process (one stage at a time) or as a
subprocess (several at once), a Ray task on a cluster node, and `accelerate launch` for the ranks of a
multi-process training stage (`--rank`). So a stage's log file, its failure, its one-line reason and its resume
behave the same everywhere.

The stage file (written by `harness.pipeline`) names the invocation (resolved config file and its hash, MLflow
URI and parent run, evaluation backend, log folder) and the planned stage. Running it:

- skips a stage whose run folder is complete;
- otherwise does the stage's work in its run folder, marks it complete last, and returns an outcome
  (`complete`, `skipped`, `failed` with a one-line reason, `blocked`), also written beside the stage file as
  `<stage>.outcome.json` for an executor that only sees the exit code;
- a cell's MLflow child run is opened by its first stage (train, or evaluate for the SFT baseline) and reused
  by the next, through the run id kept in the cell's folder: a stage that is retried or rerun continues the
  same run instead of creating a second one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import resource
import shutil
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness import record
from harness.config import ConfigError, flatten, load_config
from harness.plan import BASE, EVALUATE, JUDGE, REWARD_MODEL, SFT, TASK, TRAIN, PlannedStage, build_plan
from harness.runs import OutOfSpace, Stage, discard_resume_checkpoints, manifest, read_json, write_json
from harness.secrets import RedactingFilter
from harness.tasks.common import TaskDataError, words_of
from harness.tracking import TrackingError

logger = logging.getLogger(__name__)

COMPLETE, SKIPPED, FAILED, BLOCKED = "complete", "skipped", "failed", "blocked"
TRAIN_RESULT = "result.json"  # written by rank 0 of a training stage: checkpoint, spend, steps
WORKER_PID = "worker.pid"  # the process training a cell, for whoever needs to find (or kill) it
BAD_INPUT_ERRORS = (TaskDataError, ConfigError)  # a user's data or settings: one line, exit code 2, no traceback


class SilentReporter:
    """Progress for a stage nobody watches (a subprocess or a Ray task writes its log file instead)."""

    def stage(self, label: str, state: str, detail: str = "") -> None:
        """state: start | done | skip | fail | info."""
        logger.info("%s %s %s", label, state, detail)

    @contextlib.contextmanager
    def progress(self, description: str, total: int | None = None):
        """Yields advance(n=1, total=None): moves the bar by n; `total` sets its length once known."""
        yield lambda advance=1, total=None: None


@dataclass
class Invocation:
    """What every stage of one `harness run` shares; written into each stage file."""

    config_file: str  # the resolved config as YAML: every stage loads exactly this
    config_hash: str
    tracking_uri: str
    parent_run_id: str
    generator: str  # the evaluation backend, "auto" already decided by the driver
    stage_dir: str  # stage files, outcomes and logs of this invocation
    working_dir: str  # where `harness run` was started: relative paths in the config are relative to it


def stage_file(invocation: Invocation, stage: PlannedStage) -> Path:
    """Write the stage's file for this invocation and return its path."""
    path = Path(invocation.stage_dir) / f"{_file_name(stage.id)}.json"
    write_json(path, {"invocation": invocation.__dict__, "stage": stage.to_dict()})
    return path


def outcome_path(stage_path: Path) -> Path:
    return stage_path.with_suffix(".outcome.json")


def log_path(stage_path: Path) -> Path:
    return stage_path.with_suffix(".log")


def _file_name(stage_id: str) -> str:
    return stage_id.replace(":", "-")


def outcome(stage: PlannedStage, status: str, **fields) -> dict:
    return {"stage": stage.id, "kind": stage.kind, "cell": stage.cell, "status": status, "run_id": None,
            "summary": {}, "failure": "", "bad_input": False, "timings": [], **fields}


def skipped_outcome(stage: PlannedStage) -> dict:
    """A complete stage, as a rerun finds it: a cell's run id and summary are in its completion marker."""
    info = Stage(Path(stage.folder)).info() if stage.folder else {}
    return outcome(stage, SKIPPED, run_id=info.get("run_id"), summary=info.get("summary", {}))


# ---------------------------------------------------------------------------------------------------------
# Running one stage
# ---------------------------------------------------------------------------------------------------------


def execute(path: Path, reporter=None) -> dict:
    """Run the stage in `path` in this process; return its outcome (also written to <stage>.outcome.json).
    KeyboardInterrupt (Ctrl-C, SIGTERM) propagates after the cell's MLflow run is marked KILLED."""
    run = StageRun(read_json(path), reporter or SilentReporter(), path)
    stage = run.stage
    with _log_to(log_path(path)):
        if stage.done:
            result = skipped_outcome(stage)
            run.reporter.stage(stage.label, "skip", "complete in an earlier run")
        else:
            try:
                result = RUNNERS[stage.kind](run)
            except KeyboardInterrupt:
                raise
            except BAD_INPUT_ERRORS as error:
                result = outcome(stage, FAILED, failure=str(error), bad_input=True)
            except (OutOfSpace, TrackingError) as error:  # one line naming the folder or the store; the rerun resumes
                result = outcome(stage, FAILED, failure=str(error))
            except Exception as error:
                logger.error("stage %s failed:\n%s", stage.id, traceback.format_exc())
                result = outcome(stage, FAILED, failure=f"{one_line(error)} (log: {log_path(path)})")
        result["timings"] = run.timings
        _release_gpu_memory()
        if result["status"] == FAILED:
            run.reporter.stage(stage.label, "fail", result["failure"])
    write_json(outcome_path(path), result)
    return result


class StageRun:
    """One stage's view of the invocation: its config, its plan entry, MLflow, and its seed's prepared inputs."""

    def __init__(self, spec: dict, reporter, path: Path):
        self.path = path  # the stage file: what the ranks of a multi-process stage are launched with
        self.invocation = Invocation(**spec["invocation"])
        # A Ray worker starts in a folder of Ray's: relative paths (output_dir, a model or data folder) must
        # mean what they meant to the command that planned the run, on storage every node sees.
        os.chdir(self.invocation.working_dir)
        self.config = load_config(self.invocation.config_file)
        self.suite = self.config.suite
        self.stage = PlannedStage(**spec["stage"])
        self.plan = build_plan(self.config)
        self.reporter = reporter
        self.timings: list[dict] = []
        self._tracker = None
        if self.plan.config_hash != self.invocation.config_hash:  # the resolved file must reload as itself
            raise ConfigError(f"'{self.invocation.config_file}' does not resolve to the configuration it was written from")
        threads = self.suite.executor.cpus_per_stage
        if threads:
            import torch

            torch.set_num_threads(threads)

    @property
    def tracker(self):
        if self._tracker is None:
            from harness.tracking import Tracker

            self._tracker = Tracker(self.invocation.tracking_uri, self.suite.name, self.suite.tracking.retry_seconds)
        return self._tracker

    @property
    def folder(self) -> Path:
        return Path(self.stage.folder)

    def prepared_folder(self, kind: str, seed: int) -> Path:
        return Path(self.plan.prepare_stage(kind, seed).folder)

    @contextlib.contextmanager
    def timed(self, kind: str):
        """Skip-if-complete is the executor's; this begins the folder, times the body and marks it complete.
        A failed non-training stage leaves nothing half-made; training keeps its resumable checkpoints."""
        stage = Stage(self.folder)
        label = self.stage.label
        self.reporter.stage(label, "start")
        keep_partial = kind == "train"
        stage.begin(keep_partial=keep_partial)
        started = time.perf_counter()
        try:
            with stage.writing():
                yield stage
        except BaseException:
            if not keep_partial:
                shutil.rmtree(stage.folder, ignore_errors=True)
            raise
        seconds = time.perf_counter() - started
        discard_resume_checkpoints(stage.folder)  # SFT's and the reward model's: no pickle outlives the stage
        stage.complete({"seconds": seconds})
        self.timings.append({"stage": label, "kind": kind, "seconds": seconds})
        self.reporter.stage(label, "done", f"{seconds:.1f}s")

    def parent_logger(self, prefix: str):
        seed = self.stage.seed

        def log(step: int, metrics: dict[str, float]) -> None:
            self.tracker.log_metrics(
                self.invocation.parent_run_id, {f"{prefix}/s{seed}/{key}": value for key, value in metrics.items()}, step
            )

        return log

    # -- a seed's prepared inputs, read from complete prepare folders ---------------------------------------

    def task_inputs(self, seed: int) -> TaskInputs:
        from harness.tasks.common import load_task_data

        task_file = self.prepared_folder(TASK, seed) / "data.json"
        base_model = self.prepared_folder(BASE, seed) / "model"
        task_module = _task_module(self.config.task_name)
        task_data, prompt_format = _as_chat(load_task_data(task_file), base_model, self.suite.model)
        if hasattr(task_module, "remember_gold_answers"):  # GSM8K's verifier looks answers up by (final) prompt
            task_module.remember_gold_answers(task_data)
        _check_prompt_lengths(task_data, base_model, self.suite)
        return TaskInputs(task_module, task_data, _file_fingerprint(task_file), base_model, prompt_format)

    def prepared(self, seed: int) -> Prepared:
        inputs = self.task_inputs(seed)
        sft_dir = self.prepared_folder(SFT, seed) / "model" if self.suite.sft.enabled else inputs.base_model
        reward_folder = self.prepared_folder(REWARD_MODEL, seed)
        judge_stage = self.plan.prepare_stage(JUDGE, seed)
        judge_folder = Path(judge_stage.folder) if judge_stage else None
        return Prepared(inputs, sft_dir, reward_folder / "model", read_json(reward_folder / "metrics.json"),
                        judge_folder / "model" if judge_folder else None,
                        read_json(judge_folder / "metrics.json") if judge_folder else {})

    # -- a cell's MLflow run -------------------------------------------------------------------------------

    def cell_folder(self) -> Path:
        return self.plan.cell_folder(self.stage.algorithm, self.stage.seed)

    def open_cell_run(self, prepared: Prepared) -> str:
        """The cell's child run: the one an earlier stage (or attempt) of this cell opened, else a new one."""
        folder = self.cell_folder()
        folder.mkdir(parents=True, exist_ok=True)
        id_file = folder / "mlflow_run_id"
        earlier = id_file.read_text().strip() if id_file.is_file() else None
        tracker = self.tracker
        if tracker.resumable_cell(earlier):
            tracker.reopen(earlier)
            tracker.set_tags(earlier, {record.TAG_STATUS: record.STATUS_RUNNING})
            return earlier
        arm, seed = self.stage.algorithm, self.stage.seed
        algorithm = record.algorithm_of(arm)
        run_id = tracker.start_cell(
            self.invocation.parent_run_id,
            self.stage.cell,
            {
                record.TAG_SUITE: self.suite.name,
                record.TAG_ALGORITHM: arm,
                record.TAG_FAMILY_ALGORITHM: algorithm,
                record.TAG_SWEEP_POINT: record.sweep_point_of(arm),
                record.TAG_FAMILY: "" if arm == record.BASELINE else _algorithm_module(algorithm).FAMILY,
                record.TAG_SEED: str(seed),
                record.TAG_CELL_HASH: self.stage.hash,
                record.TAG_STATUS: record.STATUS_RUNNING,
                record.TAG_GENERATOR: self.invocation.generator,
                record.TAG_TRAINING_REWARD: self.suite.reward.source,
                record.TAG_PROMPT_FORMAT: prepared.inputs.prompt_format,
                record.TAG_GOLD: self.suite.gold.label if self._has_gold(prepared) else "none",
                record.TAG_JUDGE: self.suite.judge.label,
            },
        )
        id_file.write_text(run_id)
        config_dict = self.config.to_dict()
        # The cell's own algorithm section, at its sweep point: algorithms.dpo.beta is the value this arm trained with.
        config_dict["algorithms"] = {} if arm == record.BASELINE else {algorithm: dataclasses.asdict(self.config.arms[arm])}
        tracker.log_params(run_id, flatten(config_dict))
        write_json(folder / "resolved_config.json", config_dict)
        write_json(folder / "manifest.json", manifest(self.stage.hash, prepared.inputs.data_fingerprint))
        prepare_metrics = {"reward_model_accuracy": prepared.reward_model_metrics["heldout_accuracy"]}
        if prepared.judge_metrics.get(record.PREPARE_JUDGE_AGREEMENT) is not None:
            prepare_metrics[record.PREPARE_JUDGE_AGREEMENT] = prepared.judge_metrics[record.PREPARE_JUDGE_AGREEMENT]
        tracker.log_metrics(run_id, {f"{record.PREPARE_PREFIX}{name}": value for name, value in prepare_metrics.items()})
        return run_id

    def _has_gold(self, prepared: Prepared) -> bool:
        return self.suite.gold.source == "reward_model" or prepared.inputs.task_module.HAS_GOLD_REWARD

    @contextlib.contextmanager
    def cell_attempt(self, run_id: str):
        """A cell's failure ends its MLflow run FAILED with the reason (and the traceback in the cell folder),
        an interruption ends it KILLED; the other cells go on either way (DESIGN §4)."""
        try:
            yield
        except KeyboardInterrupt:
            self.tracker.set_tags(run_id, {record.TAG_STATUS: record.STATUS_KILLED})
            self.tracker.finish(run_id, "KILLED")
            raise
        except Exception as error:
            with contextlib.suppress(OSError):  # on a full disk the traceback cannot be kept; the reason still is
                (self.cell_folder() / "failure.txt").write_text(traceback.format_exc())
            mark_cell_failed(self.tracker, run_id, str(error) if isinstance(error, OutOfSpace) else one_line(error))
            raise


@dataclass
class TaskInputs:
    task_module: Any
    task_data: Any
    data_fingerprint: str
    base_model: Path
    prompt_format: str  # "chat template" or "plain text": how prompts reached the policy


@dataclass
class Prepared:
    inputs: TaskInputs
    sft_dir: Path
    reward_model_dir: Path
    reward_model_metrics: dict
    judge_dir: Path | None = None  # judge.kind trained: the seed's trained judge
    judge_metrics: dict = dataclasses.field(default_factory=dict)


def mark_cell_failed(tracker, run_id: str, reason: str) -> None:
    tracker.set_tags(run_id, {record.TAG_STATUS: record.STATUS_FAILED, record.TAG_FAILURE: reason[:4000]})
    tracker.finish(run_id, "FAILED")


# ---------------------------------------------------------------------------------------------------------
# The stages
# ---------------------------------------------------------------------------------------------------------


def run_task(run: StageRun) -> dict:
    from harness.tasks.common import save_task_data

    with run.timed("other") as stage:
        task_module = _task_module(run.config.task_name)
        save_task_data(task_module.build_task_data(run.config.task, run.stage.seed), stage.folder / "data.json")
    return outcome(run.stage, COMPLETE)


def run_base(run: StageRun) -> dict:
    from harness.modeling import build_tiny_causal_lm, build_word_tokenizer, load_pretrained_base, save_checkpoint
    from harness.tasks.common import load_task_data

    seed, model_config = run.stage.seed, run.suite.model
    with run.timed("other") as stage:
        if model_config.source == "build":
            # The embedded task knows its vocabulary; any other task gets one from its own data, which makes
            # tiny stand-in models for the real suites possible.
            task_module = _task_module(run.config.task_name)
            if hasattr(task_module, "vocabulary"):
                vocabulary = task_module.vocabulary()
            else:
                vocabulary = words_of(load_task_data(run.prepared_folder(TASK, seed) / "data.json"))
            chatml = model_config.chat_template == "always"  # a built tokenizer has no template unless asked for one
            if chatml:
                vocabulary = vocabulary + [w for w in model_config.system_prompt.split() if w not in vocabulary]
            tokenizer = build_word_tokenizer(vocabulary, model_config.max_positions, chatml=chatml)
            model = build_tiny_causal_lm(model_config, tokenizer, seed)
        else:
            model, tokenizer = load_pretrained_base(model_config)
        save_checkpoint(model, tokenizer, stage.folder / "model")
    # Prompts that leave no room for a completion are refused now, before anything trains on them.
    run.task_inputs(seed)
    return outcome(run.stage, COMPLETE)


def run_sft_stage(run: StageRun) -> dict:
    from harness.algorithms.sft import run_sft

    seed = run.stage.seed
    inputs = run.task_inputs(seed)  # before the folder is begun: bad data leaves nothing behind
    with run.timed("train") as stage:
        with run.reporter.progress(f"SFT (seed {seed}) steps") as advance:
            run_sft(inputs.base_model, inputs.task_data, run.suite, seed, stage.folder, run.parent_logger("prepare/sft"), advance)
    return outcome(run.stage, COMPLETE)


def run_reward_model(run: StageRun) -> dict:
    from harness.algorithms.reward_model import load_reward_model, train_reward_model

    seed, suite = run.stage.seed, run.suite
    inputs = run.task_inputs(seed)
    policy = run.prepared_folder(SFT, seed) / "model" if suite.sft.enabled else inputs.base_model
    trained = suite.reward_model.source == "train"
    with run.timed("train" if trained else "other") as stage:
        if trained:
            with run.reporter.progress(f"reward model (seed {seed}) steps") as advance:
                _, metrics = train_reward_model(
                    policy, inputs.task_data, suite, seed, stage.folder, run.parent_logger("prepare/reward_model"), advance
                )
        else:
            _, metrics = load_reward_model(inputs.task_data, suite, stage.folder)
        run.reporter.stage(run.stage.label, "info", f"held-out pair accuracy {metrics['heldout_accuracy']:.3f}")
    return outcome(run.stage, COMPLETE)


def run_judge(run: StageRun) -> dict:
    """judge.kind trained: train the seed's small pairwise judge on its preference pairs and measure its agreement
    with the gold reward on held-out pairs (harness/judges/training.py)."""
    from harness.judges.templates import load_template
    from harness.judges.training import train_judge
    from harness.tasks.common import load_task_data

    seed, suite = run.stage.seed, run.suite
    task_module = _task_module(run.config.task_name)
    task_data = load_task_data(run.prepared_folder(TASK, seed) / "data.json")  # the task's own text, no chat template
    gold = task_module.gold_reward if task_module.HAS_GOLD_REWARD else None
    with run.timed("train") as stage:
        metrics = train_judge(task_data, load_template(suite.judge.template), suite.judge.training, stage.folder / "model",
                              seed, suite.device, gold)
        write_json(stage.folder / "metrics.json", metrics)
    agreement = metrics.get(record.PREPARE_JUDGE_AGREEMENT)
    if agreement is not None:
        run.reporter.stage(run.stage.label, "info", f"agreement with gold on held-out pairs {agreement:.3f}")
    return outcome(run.stage, COMPLETE)


def run_train(run: StageRun) -> dict:
    """Train one cell's algorithm: in this process, or under `accelerate launch` when it asks for several."""
    prepared = run.prepared(run.stage.seed)  # before the folder is begun
    run_id = run.open_cell_run(prepared)
    stage = Stage(run.folder)
    label = run.stage.label
    with run.cell_attempt(run_id):
        run.reporter.stage(label, "start")
        stage.begin(keep_partial=True)  # the trainer resumes from its last checkpoint in there
        with stage.writing():
            (stage.folder / WORKER_PID).write_text(str(os.getpid()))
            started = time.perf_counter()
            if run.stage.processes > 1:
                _launch_ranks(run)
            else:
                train_in_rank(run, prepared, run_id)
            result = read_json(stage.folder / TRAIN_RESULT)
        seconds = time.perf_counter() - started
        cost = {**result["spend"], "train_steps": float(result["final_step"]), "wall_time_s": seconds,
                "peak_memory_mb": result["peak_memory_mb"], "processes": float(run.stage.processes)}
        discard_resume_checkpoints(stage.folder)  # the final model is saved: no pickle outlives the stage
        stage.complete({"checkpoint": result["checkpoint"], "cost": cost})
    run.timings.append({"stage": label, "kind": "train", "seconds": seconds})
    run.reporter.stage(label, "done", f"{seconds:.1f}s")
    return outcome(run.stage, COMPLETE, run_id=run_id)


def train_in_rank(run: StageRun, prepared: Prepared, run_id: str) -> None:
    """The algorithm's training in this process: the only one, or one rank of `accelerate launch`. Only the
    main process logs and writes the result; the algorithm reduces what it logs over the ranks."""
    from harness.algorithms.context import TrainContext, no_progress
    from harness.rewards import training_reward_function

    main_process = int(os.environ.get("RANK", "0")) == 0
    arm, seed, suite = run.stage.algorithm, run.stage.seed, run.suite
    algorithm = record.algorithm_of(arm)
    peak_before = _reset_peak_memory()
    context = TrainContext(
        algorithm=algorithm,
        config=run.config.arms[arm],
        suite=suite,
        seed=seed,
        base_dir=prepared.sft_dir,
        reward_model_dir=prepared.reward_model_dir,
        task_data=prepared.inputs.task_data,
        reward_function=training_reward_function(
            suite.reward.source, suite.reward.missing_stop_penalty, prepared.inputs.task_module,
            prepared.reward_model_dir, suite.device,
        ),
        output_dir=run.folder,
        snapshots=suite.evaluation.checkpoints,
        log_metrics=(
            (lambda step, metrics: run.tracker.log_metrics(run_id, {f"{record.TRAIN_PREFIX}{k}": v for k, v in metrics.items()}, step))
            if main_process else (lambda step, metrics: None)
        ),
    )
    with run.reporter.progress(f"{run.stage.label} steps") if main_process else contextlib.nullcontext(no_progress) as advance:
        context.progress = advance
        result = _algorithm_module(algorithm).train(context)
    if main_process:
        write_json(run.folder / TRAIN_RESULT, {
            "checkpoint": str(result.checkpoint_dir), "spend": result.spend, "final_step": result.final_step,
            "peak_memory_mb": _peak_memory_mb(peak_before),
        })


def _algorithm_module(algorithm: str):
    """The registered algorithm's module: its train() and what it declares (FAMILY, TRAINS_POLICY, ...)."""
    from harness.registry import ALGORITHMS

    return ALGORITHMS.get(algorithm)


def _launch_ranks(run: StageRun) -> None:
    """`accelerate launch` this stage file's training on launcher.num_processes processes. Never with `--cpu`:
    accelerate 1.15 then starts one process whatever N is; without it torchrun starts N, and each rank joins a
    gloo group on the CPU because the algorithm asks Accelerate for the CPU there (suite.device)."""
    import subprocess

    from harness.config import CONFIGS_DIR
    from harness.processes import start_group, wait_or_stop

    launcher, stage_path = run.suite.launcher, run.path
    command = [
        sys.executable, "-m", "accelerate.commands.launch",
        "--config_file", str(CONFIGS_DIR / "accelerate" / f"{launcher.config}.yaml"),
        "--num_processes", str(launcher.num_processes),
        "--num_machines", "1",
        "--main_process_port", str(_free_port()),
        "-m", "harness.stage", str(stage_path), "--rank",
    ]
    logger.info("launching: %s", " ".join(command))
    ranks_log = log_path(stage_path).with_suffix(".ranks.log")
    with open(ranks_log, "a") as log:
        code = wait_or_stop(start_group(command, stdout=log, stderr=subprocess.STDOUT))
    if code != 0:
        raise RuntimeError(f"accelerate launch of {launcher.num_processes} processes exited {code} (log: {ranks_log})")


def run_evaluate(run: StageRun) -> dict:
    """Evaluate a cell's checkpoint (and its intermediate ones), log eval/* and cost/*, and close its run.
    An inference-time arm (best-of-n: TRAINS_POLICY False) is evaluated as the best of its Config's `n` draws
    from its checkpoint (the SFT policy) per answer, its eval/kl the analytic bound, tagged as one."""
    from harness.metrics.evaluator import BestOf

    arm, seed = run.stage.algorithm, run.stage.seed
    prepared = run.prepared(seed)
    run_id = run.open_cell_run(prepared)
    tracker, folder = run.tracker, run.cell_folder()
    with run.cell_attempt(run_id):
        cost: dict[str, float] = {}
        checkpoint = prepared.sft_dir
        best_of = None
        if arm != record.BASELINE:
            info = Stage(folder / "train").info()
            checkpoint, cost = Path(info["checkpoint"]), info["cost"]
            if not _algorithm_module(record.algorithm_of(arm)).TRAINS_POLICY:
                # It selects by the reward the online algorithms optimise (harness/algorithms/best_of_n.py).
                reward = run.suite.reward
                best_of = BestOf(run.config.arms[arm].n, reward.source, reward.missing_stop_penalty)
        baseline_samples = _baseline_samples(run) if arm != record.BASELINE else None
        scorers = _Scorers(run, prepared)
        # Intermediate checkpoints first, each logged as eval/* at its training step; the final one last, at the
        # last step, so it is the value MLflow shows (the latest step) and the one the report tables use.
        final_step = int(cost.get("train_steps", 0))
        for step, snapshot in _snapshots(folder / "train" / "snapshots"):
            partial = _evaluate(run, f"{run.stage.cell} step {step}", prepared, snapshot, baseline_samples, scorers,
                                folder / "eval_snapshots" / f"step-{step}", best_of)
            tracker.log_metrics(run_id, {f"{record.EVAL_PREFIX}{k}": v for k, v in partial["summary"].items()}, step)
        evaluation = _evaluate(run, run.stage.cell, prepared, checkpoint, baseline_samples, scorers, folder / "eval",
                               best_of)
        scorers.close()
        tags = {record.TAG_BLEU_SIGNATURE: evaluation["bleu_signature"]}
        if best_of:
            # Best-of-n spends at inference: n completions (and n reward-model scores) per answer.
            cost.update(completions_per_answer=float(best_of.n),
                        eval_completions_generated=float(evaluation["completions_generated"]))
            tags[record.TAG_KL_IS_BOUND] = "true"
        tracker.log_metrics(run_id, {f"{record.EVAL_PREFIX}{k}": v for k, v in evaluation["summary"].items()}, final_step)
        tracker.log_metrics(run_id, {f"{record.COST_PREFIX}{k}": v for k, v in cost.items()})
        tracker.set_tags(run_id, tags)
        tracker.log_artifact(run_id, folder / "eval" / "samples.jsonl", "eval")
        tracker.log_artifact(run_id, folder / "manifest.json")
        tracker.log_artifact(run_id, folder / "resolved_config.json", "config")
    summary = evaluation["summary"]
    tracker.set_tags(run_id, {record.TAG_STATUS: record.STATUS_COMPLETE})
    tracker.finish(run_id, "FINISHED")
    Stage(folder).complete({"run_id": run_id, "summary": summary})
    run.reporter.stage(run.stage.cell, "done", headline(summary))
    return outcome(run.stage, COMPLETE, run_id=run_id, summary=summary)


def _evaluate(run: StageRun, name: str, prepared: Prepared, checkpoint: Path, baseline_samples, scorers: "_Scorers",
              folder: Path, best_of=None) -> dict:
    """One checkpoint's evaluation, kept in `folder` (samples.jsonl, summary.json); `best_of`: a
    harness.metrics.evaluator.BestOf for an inference-time arm."""
    from harness.metrics.evaluator import draws_at_train_temperature, evaluate_checkpoint
    from harness.registry import GENERATORS

    stage = Stage(folder)
    label = f"{name} evaluate"
    suite = run.suite
    if not stage.done:
        run.reporter.stage(label, "start")
        stage.begin()
        rows = prepared.inputs.task_data.eval
        count = min(len(rows), suite.evaluation.num_prompts or len(rows))
        if draws_at_train_temperature(suite.evaluation, suite.sampling.temperature, best_of):
            count *= 2  # the prompts are sampled again at the training temperature, for kl_train_temperature
        with run.reporter.progress(f"{name} sampling", count) as advance:
            generator = GENERATORS.get(run.invocation.generator).create(suite.device, suite.evaluation.batch_size, advance)
            result = evaluate_checkpoint(
                checkpoint=checkpoint,
                reference_dir=prepared.sft_dir,
                reward_model_dir=prepared.reward_model_dir,
                eval_rows=rows,
                config=suite.evaluation,
                seed=run.stage.seed,
                device=suite.device,
                generator=generator,
                gold_scorer=scorers.gold,
                baseline_samples=baseline_samples,
                judge=scorers.judge(),
                judge_vs_sft=suite.judge.vs_sft,
                judge_vs_reference=suite.judge.vs_reference,
                train_temperature=suite.sampling.temperature,
                best_of=best_of,
            )
        with stage.writing():
            with open(folder / "samples.jsonl", "w") as handle:
                for sample in result.samples:
                    handle.write(json.dumps(sample) + "\n")
            write_json(folder / "summary.json", {"summary": result.summary, "bleu_signature": result.bleu_signature,
                                                 "completions_generated": result.completions_generated})
        stage.complete({"seconds": result.seconds})
        run.timings.append({"stage": f"{label} (generate)", "kind": "generate", "seconds": result.seconds["generate"]})
        run.timings.append({"stage": f"{label} (score)", "kind": "score", "seconds": result.seconds["score"]})
        run.reporter.stage(label, "done", f"{sum(result.seconds.values()):.1f}s")
    return read_json(folder / "summary.json")


def _baseline_samples(run: StageRun) -> list[dict] | None:
    """The SFT baseline's samples (completions, gold rewards) for the win rates against SFT; None when the
    baseline did not complete."""
    folder = run.plan.cell_folder(record.BASELINE, run.stage.seed)
    if not Stage(folder).done:
        return None
    return [json.loads(line) for line in (folder / "eval" / "samples.jsonl").read_text().splitlines()]


class _Scorers:
    """A cell's gold scorer and judge, loaded once for all its checkpoints and only when a checkpoint is
    actually evaluated (a resumed cell whose evaluations are complete loads nothing)."""

    def __init__(self, run: StageRun, prepared: Prepared):
        from harness.rewards import gold_reward_function

        self.suite, self.prepared = run.suite, prepared
        self.gold = gold_reward_function(self.suite.gold, prepared.inputs.task_module, self.suite.device,
                                         self.suite.evaluation.batch_size)
        self._judge = None

    def judge(self):
        settings = self.suite.judge
        if self._judge is None and settings.enabled:
            if settings.kind == "gold":
                from harness.judges.gold import GoldJudge

                self._judge = GoldJudge(self.gold)
            else:
                from harness.judges.open import open_judge

                model = self.prepared.judge_dir if settings.kind == "trained" else settings.model
                self._judge = open_judge(settings, model, self.suite.device)
        return self._judge

    def close(self) -> None:
        if self._judge is not None:
            self._judge.close()
            self._judge = None


RUNNERS = {
    TASK: run_task,
    BASE: run_base,
    SFT: run_sft_stage,
    REWARD_MODEL: run_reward_model,
    JUDGE: run_judge,
    TRAIN: run_train,
    EVALUATE: run_evaluate,
}  # the report runs in the driver (harness.pipeline), after every cell


# ---------------------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------------------


def one_line(error: BaseException) -> str:
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0]}" if text else type(error).__name__


def headline(summary: dict) -> str:
    from harness.metrics.catalog import headline_metrics

    return "  ".join(f"{key}={summary[key]:.3f}" for key in headline_metrics() if key in summary)


def _task_module(name: str):
    from harness.registry import TASKS

    return TASKS.get(name)


def _as_chat(task_data, model_folder: Path, model_config):
    """The task data with its prompts in the policy's chat template when the suite and tokenizer call for it,
    and the prompt format the cells record ("chat template" or "plain text")."""
    from harness.modeling import load_tokenizer
    from harness.tasks.chat import ChatTemplateError, apply_chat_template, uses_chat_template

    tokenizer = load_tokenizer(model_folder, trust_remote_code=model_config.trust_remote_code)
    try:
        if not uses_chat_template(model_config.chat_template, tokenizer):
            return task_data, "plain text"
    except ChatTemplateError as error:
        raise ConfigError(str(error)) from None
    return apply_chat_template(task_data, tokenizer, model_config.system_prompt), "chat template"


def _check_prompt_lengths(task_data, model_folder: Path, suite) -> None:
    """Refuse a prompt that leaves no room in the context for its completion."""
    from harness.modeling import context_length, load_tokenizer

    limit = context_length(model_folder)
    if limit is None:
        return
    room = max(suite.sampling.max_new_tokens, suite.evaluation.max_new_tokens)
    tokenizer = load_tokenizer(model_folder)
    splits = {"train_prompts": task_data.train_prompts, "eval": [row["prompt"] for row in task_data.eval]}
    for split, prompts in splits.items():
        for row, prompt in enumerate(prompts):
            length = len(tokenizer(prompt)["input_ids"])
            if length + room > limit:
                raise TaskDataError(
                    f"task {split} row {row}: the prompt has {length} tokens, and with {room} new tokens "
                    f"it exceeds the model's context of {limit} (model.max_positions or the model's config)"
                )


def _snapshots(folder: Path) -> list[tuple[int, Path]]:
    """The intermediate checkpoints a training stage saved, as (step, folder), in training order."""
    if not folder.is_dir():
        return []
    found = [(int(path.name.split("-")[-1]), path) for path in folder.glob("step-*") if (path / "config.json").is_file()]
    return sorted(found)


def _file_fingerprint(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def _reset_peak_memory() -> float:
    """On CUDA, reset the allocator's peak so each cell measures its own; returns the RSS peak so far (MB)."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _peak_memory_mb(rss_peak_before: float) -> float:
    """CUDA peak allocated by this cell; on CPU the process's peak resident memory (an upper bound)."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return max(rss_peak_before, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def _release_gpu_memory() -> None:
    """Stages that run one after another in one process (the local executor's default) hand the GPU on: what
    training cached must be free before vLLM, which refuses to start below gpu_memory_utilization x total."""
    if "torch" not in sys.modules:
        return
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def _log_to(path: Path):
    """This stage's log records (and the warnings of the libraries it calls) go to its log file too."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.setLevel(logging.INFO)
    handler.addFilter(RedactingFilter())  # a stage's log is read by people too: no key or password in it
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield
    finally:
        root.removeHandler(handler)
        handler.close()


# ---------------------------------------------------------------------------------------------------------
# The command
# ---------------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """`python -m harness.stage <stage.json>`: exit 0 when the stage completed or was complete, 2 when it
    failed (its one-line reason on stderr and in <stage>.outcome.json), 130 when interrupted.
    `--rank`: one rank of a multi-process training stage, started by `accelerate launch`."""
    import signal

    args = list(sys.argv[1:] if argv is None else argv)
    if not args:
        print("usage: python -m harness.stage <stage.json> [--rank]", file=sys.stderr)
        return 2
    path = Path(args[0])
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    try:
        if "--rank" in args:
            from harness.processes import die_with_parent

            # torch starts each rank in a session of its own: a launcher SIGKILLed with its stage (a Ray worker
            # killed) would leave the ranks training; the kernel ends them with it instead.
            die_with_parent(expected_parent="accelerate")
            run = StageRun(read_json(path), SilentReporter(), path)
            prepared = run.prepared(run.stage.seed)
            run_id = (run.cell_folder() / "mlflow_run_id").read_text().strip()
            with _log_to(log_path(path).with_suffix(f".rank{os.environ.get('RANK', '0')}.log")):
                train_in_rank(run, prepared, run_id)
            return 0
        result = execute(path)
    except KeyboardInterrupt:
        print(f"harness.stage: interrupted: {path}", file=sys.stderr)
        return 130
    if result["status"] == FAILED:
        print(f"harness.stage: {result['stage']} failed: {result['failure']}", file=sys.stderr)
        return 2
    return 0


def _raise_keyboard_interrupt(signum, frame):
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())
