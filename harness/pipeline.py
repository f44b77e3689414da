"""The pipeline: a suite expands into cells, and every stage is skipped when its run folder is complete.

  prepare (per seed): task data -> base model -> SFT -> reward model
  cell (per algorithm and seed, plus the SFT baseline): train -> evaluate -> MLflow child run
  report: MLflow -> reports/<suite>.md

A cell that raises ends FAILED in MLflow with its reason, and the other cells go on. A rerun of the same
command finds complete stages and cells by their configuration hash and skips them; an interrupted cell
continues in its own earlier MLflow run instead of creating a second one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import resource
import shutil
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.config import ConfigError, ResolvedConfig, fingerprint, flatten
from harness.registry import GENERATORS, TASKS
from harness.runs import Stage, SuitePaths, manifest, read_json, write_json
from harness.tasks.common import TaskDataError
from harness.tracking import Tracker, default_tracking_uri

logger = logging.getLogger(__name__)

BASELINE = "sft"


# ---------------------------------------------------------------------------------------------------------
# Progress reporting: the CLI implements this; the library never prints.
# ---------------------------------------------------------------------------------------------------------


class SilentReporter:
    def stage(self, label: str, state: str, detail: str = "") -> None:
        """state: start | done | skip | fail."""

    @contextlib.contextmanager
    def progress(self, description: str, total: int | None = None):
        """Yields advance(n=1, total=None): moves the bar by n; `total` sets its length once known."""
        yield lambda advance=1, total=None: None


@dataclass
class Timing:
    stage: str
    kind: str  # train | generate | score | other
    seconds: float


@dataclass
class CellOutcome:
    name: str
    algorithm: str
    seed: int
    status: str  # complete | skipped | failed
    run_id: str | None
    summary: dict[str, float] = field(default_factory=dict)
    failure: str = ""


@dataclass
class RunOutcome:
    suite: str
    tracking_uri: str
    experiment: str
    parent_run_id: str
    cells: list[CellOutcome]
    timings: list[Timing]
    report_path: Path | None = None

    @property
    def failed(self) -> list[CellOutcome]:
        return [cell for cell in self.cells if cell.status == "failed"]


@dataclass
class Prepared:
    seed: int
    task_module: Any
    task_data: Any
    data_fingerprint: str
    sft_dir: Path
    reward_model_dir: Path
    reward_model_metrics: dict
    sft_hash: str
    reward_model_hash: str
    prompt_format: str  # "chat template" or "plain text": how prompts reached the policy


# ---------------------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------------------


class SuiteRun:
    def __init__(self, config: ResolvedConfig, reporter=None):
        self.config = config
        self.suite = config.suite
        self.reporter = reporter or SilentReporter()
        self.output_dir = Path(self.suite.output_dir).resolve()
        self.paths = SuitePaths(self.output_dir, self.suite.name)
        self.tracking_uri = self.suite.tracking.uri or default_tracking_uri(self.output_dir)
        self.timings: list[Timing] = []
        self.config_hash = fingerprint(config.to_dict())
        from harness.generation.select import resolve_generator_name

        self.generator_name = resolve_generator_name(self.suite.evaluation.generator)  # "auto" decided once

    def run(self) -> RunOutcome:
        from harness.runs import SuiteLock, require_writable
        from harness.tracking import experiment_name

        # Refuse before creating anything: an unwritable folder, then an unreachable tracking store.
        require_writable(self.output_dir)
        if self.tracking_uri.startswith("sqlite:///"):
            Path(self.tracking_uri[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
        self.tracker = Tracker(self.tracking_uri, self.suite.name)
        self.paths.root.mkdir(parents=True, exist_ok=True)
        with SuiteLock(self.paths.root):
            return self._run_locked(experiment_name(self.suite.name))

    def _run_locked(self, experiment: str) -> RunOutcome:
        # Holding the suite's lock, no other harness process works on this suite: any of its runs still
        # RUNNING was left by a process that died (SIGKILL, power loss) and is marked KILLED, never left open.
        self.tracker.kill_stale_runs(self.suite.name)
        self.parent_run_id = self.tracker.start_invocation(self.suite.name, {"harness.config_hash": self.config_hash})
        self.tracker.log_params(self.parent_run_id, flatten(self.config.to_dict()))
        cells: list[CellOutcome] = []
        status = "FAILED"
        try:
            for seed in self.suite.seeds:
                prepared = self._prepare_or_explain(seed)
                baseline = self.run_cell(BASELINE, seed, prepared, baseline_gold=None)
                cells.append(baseline)
                baseline_gold = self._baseline_gold(baseline, prepared)
                for algorithm in self.config.selected_algorithms:
                    cells.append(self.run_cell(algorithm, seed, prepared, baseline_gold))
            status = "FINISHED"
        except KeyboardInterrupt:  # Ctrl-C or SIGTERM (the CLI turns it into KeyboardInterrupt)
            status = "KILLED"
            raise
        finally:
            self.tracker.set_tags(
                self.parent_run_id,
                {
                    "harness.failed_cells": sum(c.status == "failed" for c in cells),
                    # The cells this invocation used, computed now or kept: the report's current configuration.
                    "harness.cell_runs": ",".join(c.run_id for c in cells if c.run_id),
                },
            )
            self.tracker.finish(self.parent_run_id, status)
        outcome = RunOutcome(
            self.suite.name,
            self.tracking_uri,
            experiment,
            self.parent_run_id,
            cells,
            self.timings,
        )
        outcome.report_path = self.write_report()
        # Stage timings of this invocation, for benchmarks/stage_times.py and for anyone asking where time went.
        write_json(self.paths.root / "timings.json", [dataclasses.asdict(t) for t in self.timings])
        return outcome

    # -- prepare -------------------------------------------------------------------------------------------

    def _prepare_or_explain(self, seed: int) -> Prepared:
        """Without prepared data and models no cell of this seed can run: stop with one line saying why
        (the traceback goes to a file beside the run folders)."""
        try:
            return self.prepare(seed)
        except (KeyboardInterrupt, TaskDataError, ConfigError):
            raise
        except Exception as error:
            log = self.paths.root / f"prepare-failure-s{seed}.txt"
            log.write_text(traceback.format_exc())
            raise PrepareFailed(f"preparing seed {seed} failed: {_one_line(error)} (traceback: {log})") from error

    def prepare(self, seed: int) -> Prepared:
        from harness.tasks.common import load_task_data, save_task_data

        suite = self.suite
        task_module = TASKS.get(self.config.task_name)
        task_hash = fingerprint(self.config.task_name, dataclasses.asdict(self.config.task), seed)
        base_hash = fingerprint(task_hash, dataclasses.asdict(suite.model))
        sft_hash = fingerprint(base_hash, dataclasses.asdict(suite.sft), suite.precision, *_lora_part(suite, "sft"))
        reward_model_hash = fingerprint(sft_hash, dataclasses.asdict(suite.reward_model), suite.precision)

        task_stage = Stage(self.paths.root / "prepare" / f"task-s{seed}-{task_hash}")
        with self._stage(f"task data (seed {seed})", "other", task_stage) as active:
            if active:
                save_task_data(task_module.build_task_data(self.config.task, seed), task_stage.folder / "data.json")
        task_data = load_task_data(task_stage.folder / "data.json")
        data_fingerprint = _file_fingerprint(task_stage.folder / "data.json")

        base_stage = Stage(self.paths.root / "prepare" / f"base-s{seed}-{base_hash}")
        with self._stage(f"base model (seed {seed})", "other", base_stage) as active:
            if active:
                self._build_base_model(task_module, task_data, seed, base_stage.folder / "model")
        task_data, prompt_format = self._as_chat(task_data, base_stage.folder / "model")
        if hasattr(task_module, "remember_gold_answers"):  # GSM8K's verifier looks answers up by (final) prompt
            task_module.remember_gold_answers(task_data)
        self._check_prompt_lengths(task_data, base_stage.folder / "model")

        sft_stage = Stage(self.paths.root / "prepare" / f"sft-s{seed}-{sft_hash}")
        sft_dir = base_stage.folder / "model"
        if suite.sft.enabled:
            from harness.algorithms.sft import run_sft

            with self._stage(f"SFT (seed {seed})", "train", sft_stage) as active:
                if active:
                    with self.reporter.progress(f"SFT (seed {seed}) steps") as advance:
                        run_sft(sft_dir, task_data, suite, seed, sft_stage.folder, self._parent_logger("prepare/sft", seed), advance)
            sft_dir = sft_stage.folder / "model"

        reward_stage = Stage(self.paths.root / "prepare" / f"reward_model-s{seed}-{reward_model_hash}")
        trained = suite.reward_model.source == "train"
        with self._stage(f"reward model (seed {seed})", "train" if trained else "other", reward_stage) as active:
            if active:
                from harness.algorithms.reward_model import load_reward_model, train_reward_model

                if trained:
                    with self.reporter.progress(f"reward model (seed {seed}) steps") as advance:
                        _, metrics = train_reward_model(
                            sft_dir, task_data, suite, seed, reward_stage.folder,
                            self._parent_logger("prepare/reward_model", seed), advance,
                        )
                else:
                    _, metrics = load_reward_model(task_data, suite, reward_stage.folder)
                self.reporter.stage(
                    f"reward model (seed {seed})", "info", f"held-out pair accuracy {metrics['heldout_accuracy']:.3f}"
                )
        reward_metrics = read_json(reward_stage.folder / "metrics.json")
        return Prepared(
            seed, task_module, task_data, data_fingerprint, sft_dir, reward_stage.folder / "model", reward_metrics,
            sft_hash, reward_model_hash, prompt_format,
        )

    def _build_base_model(self, task_module, task_data, seed: int, folder: Path) -> None:
        from harness.modeling import build_tiny_causal_lm, build_word_tokenizer, load_pretrained_base, save_checkpoint

        model_config = self.suite.model
        if model_config.source == "build":
            # The embedded task knows its vocabulary; any other task gets one from its own data, which makes
            # tiny stand-in models for the real suites possible.
            vocabulary = task_module.vocabulary() if hasattr(task_module, "vocabulary") else words_of(task_data)
            chatml = model_config.chat_template == "always"  # a built tokenizer has no template unless asked for one
            if chatml:
                vocabulary = vocabulary + [w for w in model_config.system_prompt.split() if w not in vocabulary]
            tokenizer = build_word_tokenizer(vocabulary, model_config.max_positions, chatml=chatml)
            model = build_tiny_causal_lm(model_config, tokenizer, seed)
        else:
            model, tokenizer = load_pretrained_base(model_config)
        save_checkpoint(model, tokenizer, folder)

    def _as_chat(self, task_data, model_folder: Path):
        """The task data with its prompts in the policy's chat template when the suite and tokenizer call for it,
        and the prompt format the cells record ("chat template" or "plain text")."""
        from harness.modeling import load_tokenizer
        from harness.tasks.chat import ChatTemplateError, apply_chat_template, uses_chat_template

        model_config = self.suite.model
        tokenizer = load_tokenizer(model_folder, trust_remote_code=model_config.trust_remote_code)
        try:
            if not uses_chat_template(model_config.chat_template, tokenizer):
                return task_data, "plain text"
        except ChatTemplateError as error:
            raise ConfigError(str(error)) from None
        return apply_chat_template(task_data, tokenizer, model_config.system_prompt), "chat template"

    def _check_prompt_lengths(self, task_data, model_folder: Path) -> None:
        """Refuse, before any training, a prompt that leaves no room in the context for its completion."""
        from harness.modeling import context_length, load_tokenizer

        limit = context_length(model_folder)
        if limit is None:
            return
        room = max(self.suite.sampling.max_new_tokens, self.suite.evaluation.max_new_tokens)
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

    @contextlib.contextmanager
    def _stage(self, label: str, kind: str, stage: Stage):
        """Skip a complete stage; otherwise run the body in a fresh folder, time it, and mark it complete."""
        if stage.done:
            self.reporter.stage(label, "skip", "complete in an earlier run")
            yield False
            return
        self.reporter.stage(label, "start")
        keep_partial = kind == "train"  # trainers resume from their last checkpoint
        stage.begin(keep_partial=keep_partial)
        started = time.perf_counter()
        try:
            yield True
        except BaseException:
            if not keep_partial:  # nothing half-made is left behind
                shutil.rmtree(stage.folder, ignore_errors=True)
            raise
        seconds = time.perf_counter() - started
        stage.complete({"seconds": seconds})
        self.timings.append(Timing(label, kind, seconds))
        self.reporter.stage(label, "done", f"{seconds:.1f}s")

    def _parent_logger(self, prefix: str, seed: int):
        def log(step: int, metrics: dict[str, float]) -> None:
            self.tracker.log_metrics(
                self.parent_run_id, {f"{prefix}/s{seed}/{key}": value for key, value in metrics.items()}, step
            )

        return log

    # -- cells ---------------------------------------------------------------------------------------------

    def cell_hash(self, algorithm: str, prepared: Prepared) -> str:
        evaluation = dataclasses.asdict(self.suite.evaluation)
        if algorithm == BASELINE:
            return fingerprint(prepared.reward_model_hash, BASELINE, evaluation)
        return fingerprint(
            prepared.reward_model_hash,
            algorithm,
            dataclasses.asdict(self.config.algorithms[algorithm]),
            dataclasses.asdict(self.suite.sampling),
            dataclasses.asdict(self.suite.reward),
            dataclasses.asdict(self.suite.budget),
            evaluation,
            self.suite.precision,
            *_lora_part(self.suite, algorithm),
        )

    def run_cell(self, algorithm: str, seed: int, prepared: Prepared, baseline_gold) -> CellOutcome:
        name = f"{algorithm}-s{seed}"
        cell_hash = self.cell_hash(algorithm, prepared)
        folder = self.paths.cell(name, cell_hash)
        cell_stage = Stage(folder)
        if cell_stage.done:
            info = cell_stage.info()
            self.reporter.stage(name, "skip", "complete in an earlier run")
            return CellOutcome(name, algorithm, seed, "skipped", info.get("run_id"), info.get("summary", {}))

        folder.mkdir(parents=True, exist_ok=True)
        run_id = self._open_cell_run(name, algorithm, seed, cell_hash, folder, prepared.prompt_format)
        self.reporter.stage(name, "start")
        try:
            summary = self._train_and_evaluate(algorithm, seed, prepared, baseline_gold, folder, run_id, cell_hash)
        except KeyboardInterrupt:
            self.tracker.set_tags(run_id, {"harness.status": "killed"})
            self.tracker.finish(run_id, "KILLED")
            raise
        except Exception as error:  # one cell's failure must not end the others (DESIGN §4)
            reason = _one_line(error)
            (folder / "failure.txt").write_text(traceback.format_exc())
            self.tracker.set_tags(run_id, {"harness.status": "failed", "harness.failure": reason[:4000]})
            self.tracker.finish(run_id, "FAILED")
            self.reporter.stage(name, "fail", reason)
            logger.debug("cell %s failed", name, exc_info=True)
            return CellOutcome(name, algorithm, seed, "failed", run_id, failure=reason)
        self.tracker.set_tags(run_id, {"harness.status": "complete"})
        self.tracker.finish(run_id, "FINISHED")
        cell_stage.complete({"run_id": run_id, "summary": summary})
        self.reporter.stage(name, "done", _headline(summary))
        return CellOutcome(name, algorithm, seed, "complete", run_id, summary)

    def _open_cell_run(self, name: str, algorithm: str, seed: int, cell_hash: str, folder: Path, prompt_format: str) -> str:
        id_file = folder / "mlflow_run_id"
        earlier = id_file.read_text().strip() if id_file.is_file() else None
        if self.tracker.resumable_cell(earlier):
            self.tracker.reopen(earlier)
            return earlier
        run_id = self.tracker.start_cell(
            self.parent_run_id,
            name,
            {
                "harness.suite": self.suite.name,
                "harness.algorithm": algorithm,
                "harness.seed": str(seed),
                "harness.cell_hash": cell_hash,
                "harness.status": "running",
                "harness.generator": self.generator_name,
                "harness.training_reward": self.suite.reward.source,
                "harness.prompt_format": prompt_format,
            },
        )
        id_file.write_text(run_id)
        return run_id

    def _train_and_evaluate(self, algorithm, seed, prepared: Prepared, baseline_gold, folder, run_id, cell_hash):
        tracker = self.tracker
        config_dict = self.config.to_dict()
        if algorithm == BASELINE:
            config_dict["algorithms"] = {}
        else:
            config_dict["algorithms"] = {algorithm: config_dict["algorithms"][algorithm]}
        tracker.log_params(run_id, flatten(config_dict))
        write_json(folder / "resolved_config.json", config_dict)
        write_json(folder / "manifest.json", manifest(cell_hash, prepared.data_fingerprint))
        tracker.log_metrics(run_id, {"prepare/reward_model_accuracy": prepared.reward_model_metrics["heldout_accuracy"]})

        cost: dict[str, float] = {}
        checkpoint = prepared.sft_dir
        if algorithm != BASELINE:
            checkpoint, cost = self._train(algorithm, seed, prepared, folder / "train", run_id)

        # Intermediate checkpoints first, each logged as eval/* at its training step; the final one last, at the
        # last step, so it is the value MLflow shows (the latest step) and the one the report tables use.
        final_step = int(cost.get("train_steps", 0))
        for step, snapshot in _snapshots(folder / "train" / "snapshots"):
            partial = self._evaluate(
                f"{algorithm}-s{seed} step {step}", prepared, snapshot, baseline_gold, folder / "eval_snapshots" / f"step-{step}", seed
            )
            tracker.log_metrics(run_id, {f"eval/{key}": value for key, value in partial["summary"].items()}, step)
        evaluation = self._evaluate(f"{algorithm}-s{seed}", prepared, checkpoint, baseline_gold, folder / "eval", seed)
        tracker.log_metrics(run_id, {f"eval/{key}": value for key, value in evaluation["summary"].items()}, final_step)
        tracker.log_metrics(run_id, {f"cost/{key}": value for key, value in cost.items()})
        tracker.set_tags(run_id, {"harness.bleu_signature": evaluation["bleu_signature"]})
        tracker.log_artifact(run_id, folder / "eval" / "samples.jsonl", "eval")
        tracker.log_artifact(run_id, folder / "manifest.json")
        tracker.log_artifact(run_id, folder / "resolved_config.json", "config")
        return evaluation["summary"]

    def _train(self, algorithm, seed, prepared: Prepared, folder: Path, run_id: str):
        from harness.algorithms.context import TrainContext
        from harness.registry import ALGORITHMS
        from harness.rewards import training_reward_function

        stage = Stage(folder)
        label = f"{algorithm}-s{seed} train"
        if not stage.done:
            self.reporter.stage(label, "start")
            stage.begin(keep_partial=True)  # the trainer resumes from its last checkpoint in there
            peak_before = _reset_peak_memory()
            started = time.perf_counter()
            context = TrainContext(
                algorithm=algorithm,
                config=self.config.algorithms[algorithm],
                suite=self.suite,
                seed=seed,
                base_dir=prepared.sft_dir,
                reward_model_dir=prepared.reward_model_dir,
                task_data=prepared.task_data,
                reward_function=training_reward_function(
                    self.suite.reward.source,
                    self.suite.reward.missing_stop_penalty,
                    prepared.task_module,
                    prepared.reward_model_dir,
                    self.suite.device,
                ),
                output_dir=folder,
                snapshots=self.suite.evaluation.checkpoints,
                log_metrics=lambda step, metrics: self.tracker.log_metrics(
                    run_id, {f"train/{key}": value for key, value in metrics.items()}, step
                ),
            )
            with self.reporter.progress(f"{label} steps") as advance:
                context.progress = advance
                result = ALGORITHMS.get(algorithm).train(context)
            seconds = time.perf_counter() - started
            cost = {
                **result.spend,
                "train_steps": float(result.final_step),
                "wall_time_s": seconds,
                "peak_memory_mb": _peak_memory_mb(peak_before),
            }
            stage.complete({"checkpoint": str(result.checkpoint_dir), "cost": cost})
            self.timings.append(Timing(label, "train", seconds))
            self.reporter.stage(label, "done", f"{seconds:.1f}s")
        info = stage.info()
        return Path(info["checkpoint"]), info["cost"]

    def _evaluate(self, name: str, prepared: Prepared, checkpoint: Path, baseline_gold, folder: Path, seed: int) -> dict:
        from harness.metrics.evaluator import evaluate_checkpoint

        stage = Stage(folder)
        label = f"{name} evaluate"
        if not stage.done:
            self.reporter.stage(label, "start")
            stage.begin()
            rows = prepared.task_data.eval
            count = min(len(rows), self.suite.evaluation.num_prompts or len(rows))
            with self.reporter.progress(f"{name} sampling", count) as advance:
                generator = GENERATORS.get(self.generator_name).create(
                    self.suite.device, self.suite.evaluation.batch_size, advance
                )
                result = evaluate_checkpoint(
                    checkpoint=checkpoint,
                    reference_dir=prepared.sft_dir,
                    reward_model_dir=prepared.reward_model_dir,
                    task_module=prepared.task_module,
                    eval_rows=rows,
                    config=self.suite.evaluation,
                    seed=seed,
                    device=self.suite.device,
                    generator=generator,
                    baseline_gold=baseline_gold,
                )
            with open(folder / "samples.jsonl", "w") as handle:
                for sample in result.samples:
                    handle.write(json.dumps(sample) + "\n")
            write_json(folder / "summary.json", {"summary": result.summary, "bleu_signature": result.bleu_signature})
            stage.complete({"seconds": result.seconds})
            self.timings.append(Timing(f"{label} (generate)", "generate", result.seconds["generate"]))
            self.timings.append(Timing(f"{label} (score)", "score", result.seconds["score"]))
            self.reporter.stage(label, "done", f"{sum(result.seconds.values()):.1f}s")
        return read_json(folder / "summary.json")

    def _baseline_gold(self, baseline: CellOutcome, prepared: Prepared) -> list[float] | None:
        """The SFT baseline's per-sample gold rewards in (prompt, sample) order, for win rates."""
        if baseline.status == "failed" or not prepared.task_module.HAS_GOLD_REWARD:
            return None
        folder = self.paths.cell(baseline.name, self.cell_hash(BASELINE, prepared)) / "eval" / "samples.jsonl"
        samples = [json.loads(line) for line in folder.read_text().splitlines()]
        samples.sort(key=lambda s: (s["prompt_index"], s["sample_index"]))
        return [s["gold_reward"] for s in samples]

    def write_report(self) -> Path | None:
        from harness.report.markdown import write_report

        started = time.perf_counter()
        path = write_report(self.tracking_uri, self.suite.name, Path(self.suite.reports_dir))
        self.timings.append(Timing("report", "other", time.perf_counter() - started))
        return path


def run_suite(config: ResolvedConfig, reporter=None) -> RunOutcome:
    return SuiteRun(config, reporter).run()


class PrepareFailed(RuntimeError):
    """Task data, base model, SFT or reward model could not be prepared; one line with the reason."""


def _one_line(error: BaseException) -> str:
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0]}" if text else type(error).__name__


def _lora_part(suite, stage: str) -> list:
    """The LoRA settings a stage's hash includes: none when the stage trains without adapters, so a suite that
    never uses LoRA keeps the run folders it had before LoRA existed."""
    settings = suite.lora.for_stage(stage)
    return [] if settings is None else [{"lora": settings}]


def _snapshots(folder: Path) -> list[tuple[int, Path]]:
    """The intermediate checkpoints a training stage saved, as (step, folder), in training order."""
    if not folder.is_dir():
        return []
    found = [(int(path.name.split("-")[-1]), path) for path in folder.glob("step-*") if (path / "config.json").is_file()]
    return sorted(found)


def words_of(task_data) -> list[str]:
    """Every whitespace-separated word in a task's texts, sorted: a word-level vocabulary for a stand-in model."""
    texts = [*task_data.train_prompts]
    for row in task_data.sft:
        texts += [row["prompt"], row["completion"]]
    for row in task_data.preferences + task_data.heldout_preferences:
        texts += [row["prompt"], row["chosen"], row["rejected"]]
    for row in task_data.eval:
        texts += [row["prompt"], row["reference"]]
    return sorted({word for text in texts for word in text.split()})


def _headline(summary: dict) -> str:
    keys = ("gold_reward", "proxy_reward", "kl", "win_rate_vs_sft")
    return "  ".join(f"{key}={summary[key]:.3f}" for key in keys if key in summary)


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
