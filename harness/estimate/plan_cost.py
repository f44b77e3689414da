"""A plan's cost before it runs: each stage's tokens (workload.py) times the throughput table's rates, plus
its start cost; the total one stage after another and at the executor's parallelism (schedule.py); and the
device-hours each algorithm takes. Nothing here imports torch: `harness plan` stays instant."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from harness.estimate.schedule import list_schedule, makespan
from harness.estimate.throughput import (
    RUN_START,
    STAGE_OVERHEAD,
    Rates,
    cpu_device,
    cuda_device,
    lookup,
    model_key,
    read_table,
    table_path,
    visible_gpu_model,
)
from harness.estimate.workload import (
    Lengths,
    Work,
    guessed_lengths,
    lengths_of,
    prepared_task_data,
    stage_work,
    task_key,
    task_sizes,
    tokens_per_word,
)
from harness.executors import waits
from harness.executors.scheduler import start_order
from harness.plan import REPORT, Plan, parallel_workers
from harness.record import BASELINE, algorithm_of

# A forward pass costs about a third of a training step's forward + backward (2N against 6N FLOPs per token,
# Kaplan et al. 2020, arXiv:2001.08361 §2.1): a scored token is a third of a trained one.
FORWARD_SHARE = 1 / 3
SHARED = "shared"  # the device-hours row of the prepare stages and the SFT baseline's evaluation


@dataclass
class StageCost:
    id: str
    kind: str
    algorithm: str  # the arm's algorithm, or SHARED
    work: Work
    done: bool
    seconds: float | None  # None: no throughput entry for this suite's model and device


@dataclass
class Estimate:
    stages: list[StageCost]
    lengths: Lengths
    device: str  # the throughput table's device key: "cpu:2t", "cuda:NVIDIA H200"
    model: str
    precision: str
    workers: int
    threads: int  # cores one stage gets
    on_gpu: bool
    table: Path
    rates: Rates | None
    serial_seconds: float | None = None
    parallel_seconds: float | None = None
    device_hours: dict[str, float] = field(default_factory=dict)  # algorithm (or SHARED) -> GPU- or core-hours

    @property
    def calibrated(self) -> bool:
        return self.rates is not None

    @property
    def hours_unit(self) -> str:
        return "GPU-hours" if self.on_gpu else "core-hours"

    def to_dict(self) -> dict:
        return {
            "calibrated": self.calibrated,
            "device": self.device,
            "model": self.model,
            "precision": self.precision,
            "workers": self.workers,
            "threads_per_stage": self.threads,
            "throughput_table": str(self.table),
            "lengths": {
                "prompt": self.lengths.prompt,
                "completion": self.lengths.completion,
                "source": self.lengths.source,
            },
            "serial_seconds": self.serial_seconds,
            "parallel_seconds": self.parallel_seconds,
            "device_hours_unit": self.hours_unit,
            "device_hours": self.device_hours,
            "stages": [
                {
                    "id": cost.id,
                    "kind": cost.kind,
                    "algorithm": cost.algorithm,
                    "complete": cost.done,
                    "trained_tokens": cost.work.trained,
                    "scored_tokens": cost.work.scored,
                    "generated_tokens": cost.work.generated,
                    "seconds": cost.seconds,
                }
                for cost in self.stages
            ],
        }


def estimate_plan(config, plan: Plan, cores: int | None = None) -> Estimate:
    suite = config.suite
    cores = cores or len(os.sched_getaffinity(0))
    workers = parallel_workers(suite)
    threads = suite.executor.cpus_per_stage or max(1, cores // workers)  # as harness/executors/local.py shares them
    on_gpu = any(stage.gpus for stage in plan.stages)
    device = cuda_device(visible_gpu_model() or "unknown") if on_gpu else cpu_device(threads)
    model = model_key(suite.model)
    table = read_table(table_path(suite.output_dir))
    rates = lookup(table, device, model, suite.precision, parameter_count(suite.model))

    data = prepared_task_data(plan)
    lengths = plan_lengths(config, plan, data, table)
    sizes = task_sizes(config, data)
    costs = []
    for stage in plan.stages:
        work = stage_work(stage, config, lengths, sizes)
        done = stage.kind != REPORT and stage.done
        algorithm = algorithm_of(stage.arm) if stage.arm else None
        seconds = None if rates is None else (0.0 if done else stage_seconds(stage.kind, work, rates, algorithm))
        owner = algorithm if algorithm and algorithm != BASELINE else SHARED
        costs.append(StageCost(stage.id, stage.kind, owner, work, done, seconds))
    estimate = Estimate(costs, lengths, device, model, suite.precision, workers, threads, on_gpu, table.path, rates)
    if rates is not None:
        fill_totals(estimate, plan)
    return estimate


def plan_lengths(config, plan: Plan, data: dict | None, table) -> Lengths:
    """As `harness calibrate` measured them with the model's tokenizer, else counted in a prepared seed's data
    (words, workload.TOKENS_PER_WORD_SUBWORD), else a guess."""
    measured = table.lengths.get(task_key(config))
    if measured:
        return Lengths(measured["prompt"], measured["completion"], "calibration")
    if data is not None:
        return lengths_of(data, tokens_per_word(config))
    return guessed_lengths(config)


def scale_key(kind: str, algorithm: str) -> str:
    """The table's scale of one algorithm's train or evaluate stages ("train:grpo"), beside its kind's."""
    return f"{kind}:{algorithm}"


def stage_seconds(kind: str, work: Work, rates: Rates, algorithm: str | None = None) -> float:
    """Start cost, the per-stage overhead, and the counted tokens at the table's rates times the fitted scale
    of the stage's algorithm (train and evaluate stages), else of its kind."""
    variable = (work.trained + FORWARD_SHARE * work.scored) * rates.seconds_per_trained_token
    variable += work.generated * rates.seconds_per_generated_token
    overhead = 0.0 if kind == REPORT else rates.start_seconds.get(STAGE_OVERHEAD, 0.0)
    scale = rates.scale.get(kind, 1.0)
    if algorithm:
        scale = rates.scale.get(scale_key(kind, algorithm), scale)
    return rates.start_seconds.get(kind, 0.0) + overhead + scale * variable


def fill_totals(estimate: Estimate, plan: Plan) -> None:
    """Serial and parallel wall time (the invocation's start, the stages, the report after every cell) and
    the device-hours of each algorithm."""
    seconds = {cost.id: cost.seconds for cost in estimate.stages}
    run_start = estimate.rates.start_seconds.get(RUN_START, 0.0)
    report = seconds.get(REPORT, 0.0)
    stages = [stage for stage in plan.stages if stage.kind != REPORT]
    estimate.serial_seconds = run_start + sum(seconds[stage.id] for stage in stages) + report
    slots = list_schedule(
        [stage.id for stage in start_order(stages)],
        {stage.id: waits(stage) for stage in stages},
        seconds,
        estimate.workers,
    )
    estimate.parallel_seconds = run_start + makespan(slots) + report
    by_id = {stage.id: stage for stage in plan.stages}
    hours: dict[str, float] = {}
    for cost in estimate.stages:
        if cost.kind == REPORT:
            continue
        stage = by_id[cost.id]
        units = stage.gpus if estimate.on_gpu else estimate.threads
        hours[cost.algorithm] = hours.get(cost.algorithm, 0.0) + cost.seconds * units / 3600
    estimate.device_hours = hours


def parameter_count(model_config) -> int | None:
    """A local checkpoint's parameter count from its config.json (a transformer's usual shapes), for the table's
    parameter buckets; None when it cannot be told without loading the model."""
    if model_config.source != "path":
        return None
    try:
        shape = json.loads((Path(model_config.name_or_path) / "config.json").read_text())
        hidden, layers, vocab = shape["hidden_size"], shape["num_hidden_layers"], shape["vocab_size"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    inner = shape.get("intermediate_size") or 4 * hidden
    return int(layers * (4 * hidden * hidden + 3 * hidden * inner) + vocab * hidden)
