"""A stage's context in the process that runs it: its config, its plan entry, MLflow, and its seed's inputs."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import time
from pathlib import Path

from harness.config import load_config
from harness.errors import ConfigError
from harness.plan import BASE, JUDGE, REWARD_MODEL, SFT, TASK, Stage, build_plan
from harness.runs import OutputFolder, discard_resume_checkpoints, read_json
from harness.stages.files import Invocation
from harness.stages.inputs import Prepared, TaskInputs, as_chat, check_prompt_lengths, file_fingerprint, task_module
from harness.tasks.common import load_task_data

logger = logging.getLogger(__name__)


class SilentReporter:
    """Progress for a stage nobody watches (a subprocess or a Ray task writes its log file instead)."""

    def stage(self, label: str, state: str, detail: str = "") -> None:
        """state: start | done | skip | fail | info."""
        logger.info("%s %s %s", label, state, detail)

    @contextlib.contextmanager
    def progress(self, description: str, total: int | None = None):
        """Yields advance(n=1, total=None): moves the bar by n; `total` sets its length once known."""
        yield lambda advance=1, total=None: None


class StageContext:
    """One stage's view of the invocation: its config, its plan entry, MLflow, and its seed's prepared inputs."""

    def __init__(self, spec: dict, reporter, path: Path):
        self.path = path  # the stage file: what the ranks of a multi-process stage are launched with
        self.invocation = Invocation(**spec["invocation"])
        # A Ray worker starts in a folder of Ray's: relative paths (output_dir, a model or data folder) must
        # mean what they meant to the command that planned the run, on storage every node sees.
        os.chdir(self.invocation.working_dir)
        self.config = load_config(self.invocation.config_file)
        self.suite = self.config.suite
        self.stage = Stage(**spec["stage"])
        self.plan = build_plan(self.config)
        self.reporter = reporter
        self.timings: list[dict] = []
        self._tracker = None
        if self.plan.config_hash != self.invocation.config_hash:  # the resolved file must reload as itself
            raise ConfigError(
                f"'{self.invocation.config_file}' does not resolve to the configuration it was written from"
            )
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

    def flush_metrics(self) -> None:
        """Write the metrics the stage logged that are still queued (Tracker.log_metrics)."""
        if self._tracker is not None:
            self._tracker.flush()

    @property
    def folder(self) -> Path:
        return Path(self.stage.folder)

    def cell_folder(self) -> Path:
        return self.plan.cell_folder(self.stage.arm, self.stage.seed)

    def prepared_folder(self, kind: str, seed: int) -> Path:
        return Path(self.plan.prepare_stage(kind, seed).folder)

    @contextlib.contextmanager
    def timed(self, kind: str):
        """Skip-if-complete is the executor's; this begins the folder, times the body and marks it complete.
        A failed non-training stage leaves nothing half-made; training keeps its resumable checkpoints."""
        stage = OutputFolder(self.folder)
        label = self.stage.label
        self.reporter.stage(label, "start")
        keep_partial = kind == "train"
        stage.begin(keep_partial=keep_partial)
        started = time.perf_counter()
        try:
            with stage.writing():
                yield stage.folder  # the folder the body writes into
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
                self.invocation.parent_run_id,
                {f"{prefix}/s{seed}/{key}": value for key, value in metrics.items()},
                step,
            )

        return log

    # -- a seed's prepared inputs, read from complete prepare folders ---------------------------------------

    def task_inputs(self, seed: int) -> TaskInputs:

        task_file = self.prepared_folder(TASK, seed) / "data.json"
        base_model = self.prepared_folder(BASE, seed) / "model"
        module = task_module(self.config.task_name)
        task_data, prompt_format = as_chat(load_task_data(task_file), base_model, self.suite.model)
        if hasattr(module, "remember_gold_answers"):  # GSM8K's verifier looks answers up by (final) prompt
            module.remember_gold_answers(task_data)
        check_prompt_lengths(task_data, base_model, self.suite)
        return TaskInputs(module, task_data, file_fingerprint(task_file), base_model, prompt_format)

    def prepared(self, seed: int, with_judge: bool = True) -> Prepared:
        """The seed's prepared inputs; the trained judge only `with_judge` (the evaluation's: a training stage
        does not wait for it, and on parallel workers it may still be training)."""
        inputs = self.task_inputs(seed)
        sft_dir = self.prepared_folder(SFT, seed) / "model" if self.suite.sft.enabled else inputs.base_model
        reward_folder = self.prepared_folder(REWARD_MODEL, seed)
        judge_stage = self.plan.prepare_stage(JUDGE, seed) if with_judge else None
        judge_folder = Path(judge_stage.folder) if judge_stage else None
        return Prepared(
            inputs,
            sft_dir,
            reward_folder / "model",
            read_json(reward_folder / "metrics.json"),
            judge_folder / "model" if judge_folder else None,
            read_json(judge_folder / "metrics.json") if judge_folder else {},
        )
