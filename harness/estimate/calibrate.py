"""`harness calibrate suite=NAME`: measure the throughput table's entry for the suite's model on this machine.

1. Rates, in seconds: a few AdamW steps of the causal-LM loss on batches of the task's SFT examples, and a few
   sampled `generate()` calls on its evaluation prompts, on the suite's own model (built or loaded as the base
   stage does), precision and device, at the threads one stage gets under the suite's executor.
2. Start costs: building the task data and loading the model, as measured here; then, when the suite has run in
   this output folder, fitted to that run: per stage kind, the measured seconds (runs/<suite>/timings.json)
   against the counted tokens (measured = start + scale x counted, least squares where the kind has several
   workloads), what each stage cost outside its timed body (solved so that the executor's schedule of the run
   lasts as long as the run did, from its invocation folder's and timings.json's times), the invocation's own
   start (suite lock to invocation folder) and the report (timings.json to the report file).

The lead changes what a stage costs to start (persistent workers): fitting to a run, not constants, keeps up.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from harness.errors import UserError
from harness.estimate.plan_cost import scale_key, stage_seconds
from harness.estimate.schedule import list_schedule, makespan
from harness.estimate.throughput import (
    RUN_START,
    STAGE_OVERHEAD,
    Rates,
    cpu_device,
    cuda_device,
    entry_key,
    model_key,
    read_table,
    table_path,
    write_table,
)
from harness.estimate.workload import Lengths, stage_work, task_key, task_sizes
from harness.plan import BASE, EVALUATE, MODEL_KINDS, REPORT, TASK, TRAIN, build_plan
from harness.record import algorithm_of

MIN_TIMED_SECONDS = 1.0  # each rate is timed for at least this long (and MIN_REPEATS calls) after a warm-up
MIN_REPEATS = 3
MAX_REPEATS = 30


class StaleRunError(Exception):
    """The suite's last run was made with settings this harness no longer reads: nothing to fit to."""


@dataclass
class Measurement:
    seconds_per_trained_token: float
    seconds_per_generated_token: float
    task_seconds: float
    load_seconds: float
    lengths: Lengths
    device: str
    threads: int


@dataclass
class Fit:
    """Start costs and scales fitted to a run, and what they came from."""

    start_seconds: dict[str, float] = field(default_factory=dict)
    scale: dict[str, float] = field(default_factory=dict)
    stages: int = 0  # timed stages fitted to
    threads: int = 0  # the threads each of that run's stages had
    source: str = ""


def calibrate(config, cores: int | None = None) -> tuple[Path, list[str], Fit | None, str]:
    """Measure, fit to the suite's last run when there is one, and write the entries; returns the table's path,
    the entry keys written, the fit and why there is none ("" when there is one or no run)."""
    from harness.plan import parallel_workers

    suite = config.suite
    cores = cores or len(os.sched_getaffinity(0))
    threads = suite.executor.cpus_per_stage or max(1, cores // parallel_workers(suite))
    plan = build_plan(config)
    measured = {threads: measure(config, threads)}
    fit, note = None, ""
    try:
        last_run = last_run_of(plan.root)
    except StaleRunError as error:
        last_run, note = None, f"not fitted to the last run: {error}"
    if last_run is not None:  # the run's seconds against the rates of the threads it ran with
        run_threads = threads_of(last_run[1], cores)
        if run_threads not in measured:
            measured[run_threads] = measure(config, run_threads)
        fit = fit_to_run(plan.root, *last_run, measured[run_threads])
    import_seconds = measure_import_seconds()

    table = read_table(table_path(suite.output_dir))
    keys = []
    for measurement in measured.values():
        start = {kind: measurement.load_seconds for kind in (*MODEL_KINDS, BASE)}
        start[TASK] = measurement.task_seconds
        start[RUN_START] = import_seconds
        scale = {}
        if fit:
            start.update(fit.start_seconds)
            start[RUN_START] = import_seconds + fit.start_seconds.get(RUN_START, 0.0)
            scale = fit.scale
        key = entry_key(measurement.device, model_key(suite.model), suite.precision)
        table.entries[key] = Rates(
            measurement.seconds_per_trained_token,
            measurement.seconds_per_generated_token,
            start,
            dict(scale),
            f"harness calibrate suite={suite.name}" + (f", fitted to {fit.source}" if fit else ""),
            time.strftime("%Y-%m-%dT%H:%M:%S"),
        )
        keys.append(key)
    lengths = measured[threads].lengths
    table.lengths[task_key(config)] = {"prompt": lengths.prompt, "completion": lengths.completion}
    write_table(table)
    return table.path, keys, fit, note


# ---------------------------------------------------------------------------------------------------------
# Rates
# ---------------------------------------------------------------------------------------------------------


def measure(config, threads: int) -> Measurement:
    import torch

    from harness.stages.inputs import task_module

    suite = config.suite
    torch.set_num_threads(threads)
    seed = suite.seeds[0]
    started = time.perf_counter()
    data = task_module(config.task_name).build_task_data(config.task, seed)
    task_seconds = time.perf_counter() - started
    started = time.perf_counter()
    model, tokenizer = _model(config, data, seed)
    on_gpu = suite.device == "cuda" or (suite.device == "auto" and torch.cuda.is_available())
    device = "cuda" if on_gpu else "cpu"
    model.to(device)
    if suite.precision == "bf16":
        model.to(torch.bfloat16)
    load_seconds = time.perf_counter() - started

    lengths = _token_lengths(tokenizer, data)
    texts = [row["prompt"] + row["completion"] for row in data.sft]
    train = _time_training(model, tokenizer, texts, suite.sft.batch_size, device)
    prompts = [row["prompt"] for row in data.eval]
    generate = _time_generation(model, tokenizer, prompts, suite.evaluation, device)
    name = cuda_device(torch.cuda.get_device_name(0)) if on_gpu else cpu_device(threads)
    return Measurement(train, generate, task_seconds, load_seconds, lengths, name, threads)


def _model(config, data, seed: int):
    """The suite's base model, as the base stage makes it (harness/stages/base_model.py)."""
    from harness.modeling import build_tiny_causal_lm, build_word_tokenizer, load_pretrained_base
    from harness.stages.inputs import task_module
    from harness.tasks.common import words_of

    model_config = config.suite.model
    if model_config.source != "build":
        return load_pretrained_base(model_config)
    module = task_module(config.task_name)
    vocabulary = module.vocabulary() if hasattr(module, "vocabulary") else words_of(data)
    chatml = model_config.chat_template == "always"
    if chatml:
        vocabulary = vocabulary + [w for w in model_config.system_prompt.split() if w not in vocabulary]
    tokenizer = build_word_tokenizer(vocabulary, model_config.max_positions, chatml=chatml)
    return build_tiny_causal_lm(model_config, tokenizer, seed), tokenizer


def _token_lengths(tokenizer, data) -> Lengths:
    """Mean tokens of prompts and completions by the model's own tokenizer (what workload.py counts)."""
    prompts = [row["prompt"] for row in data.sft] + [row["prompt"] for row in data.preferences]
    completions = [row["completion"] for row in data.sft]
    completions += [row[side] for row in data.preferences for side in ("chosen", "rejected")]

    def mean(texts):
        sample = texts[:2000]  # enough for a mean; a real task has 20k rows
        return sum(len(ids) for ids in tokenizer(sample, add_special_tokens=False)["input_ids"]) / max(1, len(sample))

    return Lengths(mean(prompts), mean(completions), "calibration")


def _repeat(call) -> tuple[float, int]:
    """Seconds and calls of `call` repeated for MIN_TIMED_SECONDS (MIN_REPEATS..MAX_REPEATS), after one warm-up."""
    call(0)
    count, started = 0, time.perf_counter()
    while count < MIN_REPEATS or (time.perf_counter() - started < MIN_TIMED_SECONDS and count < MAX_REPEATS):
        call(count + 1)
        count += 1
    return time.perf_counter() - started, count


def _time_training(model, tokenizer, texts: list[str], batch_size: int, device: str) -> float:
    """Seconds per trained (non-padding) token of AdamW steps on the causal-LM loss."""
    import torch

    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    model.train()
    tokens = []

    def step(index: int):
        start = (index * batch_size) % max(1, len(texts) - batch_size)
        batch = tokenizer(texts[start : start + batch_size], return_tensors="pt", padding=True, truncation=True)
        batch = {name: tensor.to(device) for name, tensor in batch.items() if name in ("input_ids", "attention_mask")}
        labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
        loss = model(**batch, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()
        if index:
            tokens.append(int(batch["attention_mask"].sum()))

    seconds, _ = _repeat(step)
    model.eval()
    return seconds / sum(tokens)


def _time_generation(model, tokenizer, prompts: list[str], evaluation, device: str) -> float:
    """Seconds per generated token slot (prompts x samples x max_new_tokens) of sampled generate() calls."""
    import torch

    tokenizer.padding_side = "left"
    batch = prompts[: evaluation.batch_size]
    encoded = tokenizer(batch, return_tensors="pt", padding=True)
    encoded = {name: tensor.to(device) for name, tensor in encoded.items() if name in ("input_ids", "attention_mask")}

    def call(_index: int):
        with torch.no_grad():
            model.generate(
                **encoded,
                do_sample=True,
                temperature=evaluation.temperature,
                top_k=0,
                top_p=1.0,
                max_new_tokens=evaluation.max_new_tokens,
                num_return_sequences=evaluation.samples_per_prompt,
                pad_token_id=tokenizer.pad_token_id,
            )
        if device == "cuda":
            torch.cuda.synchronize()

    seconds, calls = _repeat(call)
    return seconds / (calls * len(batch) * evaluation.samples_per_prompt * evaluation.max_new_tokens)


def measure_import_seconds() -> float:
    """What a `harness run` spends importing before it does anything: the run path's modules, in a fresh
    interpreter (this one has them already)."""
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-c", "import harness.cli, harness.pipeline, torch, transformers, mlflow"],
        check=True,
        capture_output=True,
    )
    return time.perf_counter() - started


# ---------------------------------------------------------------------------------------------------------
# Fitting to the suite's last run
# ---------------------------------------------------------------------------------------------------------


def last_run_of(root: Path):
    """(invocation folder, its resolved config) of the run that wrote root/timings.json, or None."""
    from harness.config import load_config

    invocation = _invocation_of(root / "timings.json")
    if invocation is None:
        return None
    try:
        return invocation, load_config(str(invocation / "resolved.yaml"))
    except UserError as error:  # a run of an older harness whose settings this one no longer reads
        raise StaleRunError(f"{invocation / 'resolved.yaml'}: {error}") from None


def threads_of(run_config, cores: int) -> int:
    """The threads each stage of that run had (as harness/executors/local.py shares the cores)."""
    from harness.plan import parallel_workers

    return run_config.suite.executor.cpus_per_stage or max(1, cores // parallel_workers(run_config.suite))


def fit_to_run(root: Path, invocation: Path, run_config, measurement: Measurement) -> Fit | None:
    """Start costs and scales from a run of root (runs/<suite>), with rates measured at its threads; None when
    none of its stages was timed."""
    import json

    from harness.plan import parallel_workers

    timings_file = root / "timings.json"
    timings = json.loads(timings_file.read_text())
    run_plan = build_plan(run_config)
    workers = parallel_workers(run_config.suite)

    rates = Rates(measurement.seconds_per_trained_token, measurement.seconds_per_generated_token)
    sizes = task_sizes(run_config)
    measured: dict[str, float] = {}
    counted: dict[str, float] = {}
    kinds: dict[str, str] = {}
    owners: dict[str, str] = {}  # train and evaluate stages: their algorithm
    for stage in run_plan.stages:
        phases = [
            t["seconds"] for t in timings if t["stage"] == stage.label or t["stage"].startswith(stage.label + " (")
        ]
        if not phases:
            continue  # skipped (complete in an earlier run), failed or not in that run
        measured[stage.id] = sum(phases)
        counted[stage.id] = stage_seconds(stage.kind, stage_work(stage, run_config, measurement.lengths, sizes), rates)
        kinds[stage.id] = stage.kind
        if stage.kind in (TRAIN, EVALUATE):
            owners[stage.id] = algorithm_of(stage.arm)
    if not measured:
        return None
    fit = Fit(stages=len(measured), threads=measurement.threads, source=str(timings_file))
    for kind in sorted(set(kinds.values())):
        points = [(counted[i], measured[i]) for i in measured if kinds[i] == kind]
        fit.start_seconds[kind], fit.scale[kind] = fit_kind(points)
    # Algorithms of one kind differ in more than their tokens (TRL's generation loop against the harness's own
    # PPO, early stops): each timed algorithm gets its own scale over its kind's start, so its time still grows
    # with its budget; an algorithm that was not timed keeps its kind's.
    for stage_id, owner in owners.items():
        kind = kinds[stage_id]
        same = [i for i in owners if owners[i] == owner and kinds[i] == kind]
        spent = statistics.fmean(measured[i] for i in same) - fit.start_seconds[kind]
        count = statistics.fmean(counted[i] for i in same)
        if count > 0:
            fit.scale[scale_key(kind, owner)] = max(spent, 0.0) / count

    # What the stages cost outside their timed bodies: the overhead d that makes the executor's schedule of the
    # measured stages last as long as the run's stages did.
    stages = [stage for stage in run_plan.stages if stage.kind != REPORT]
    began = (invocation / "resolved.yaml").stat().st_mtime
    stages_wall = timings_file.stat().st_mtime - began
    fit.start_seconds[STAGE_OVERHEAD] = solve_overhead(stages, measured, workers, stages_wall)
    lock = root / ".lock"
    if lock.exists() and lock.stat().st_mtime <= began:
        fit.start_seconds[RUN_START] = began - lock.stat().st_mtime
    report = _report_file(invocation, run_config)
    if report and report.stat().st_mtime >= timings_file.stat().st_mtime:
        fit.start_seconds[REPORT] = report.stat().st_mtime - timings_file.stat().st_mtime
    return fit


def fit_kind(points: list[tuple[float, float]]) -> tuple[float, float]:
    """(start, scale) with measured = start + scale x counted: least squares when the kind has three or more
    distinct workloads, both kept >= 0; else the scale 1 and the mean remainder as the start (or, when the
    counted time exceeds the measured one, no start and the measured share as the scale)."""
    counted = [c for c, _ in points]
    seconds = [m for _, m in points]
    mean_c, mean_m = statistics.fmean(counted), statistics.fmean(seconds)
    if len({round(c, 9) for c in counted}) >= 3:
        spread = sum((c - mean_c) ** 2 for c in counted)
        scale = sum((c - mean_c) * (m - mean_m) for c, m in points) / spread
        start = mean_m - scale * mean_c
        if scale > 0 and start >= 0:
            return start, scale
        if scale > 0:  # the line crosses below zero: through the origin instead
            return 0.0, sum(c * m for c, m in points) / sum(c * c for c in counted)
    if mean_c <= 0:
        return mean_m, 1.0
    if mean_m >= mean_c:
        return mean_m - mean_c, 1.0
    return 0.0, mean_m / mean_c


def solve_overhead(stages, measured: dict[str, float], workers: int, wall: float) -> float:
    """The per-stage overhead d (bisection: the schedule's length grows with d) for which the list schedule
    of the stages that ran, each measured + d, lasts `wall`; 0 when the measured stages alone fill it."""
    from harness.executors import waits

    ran = [stage for stage in stages if stage.id in measured]
    order = [stage.id for stage in ran]
    waits_of = {stage.id: waits(stage) for stage in ran}

    def length(overhead: float) -> float:
        return makespan(list_schedule(order, waits_of, {i: measured[i] + overhead for i in order}, workers))

    if not ran or length(0.0) >= wall:
        return 0.0
    low, high = 0.0, wall / len(ran)
    for _ in range(40):
        middle = (low + high) / 2
        low, high = (middle, high) if length(middle) < wall else (low, middle)
    return (low + high) / 2


def _invocation_of(timings_file: Path) -> Path | None:
    """The invocation folder of the run that wrote timings.json: the last one begun before it was written."""
    if not timings_file.is_file():
        return None
    written = timings_file.stat().st_mtime
    candidates = [
        path.parent
        for path in (timings_file.parent / "invocations").glob("*/resolved.yaml")
        if path.stat().st_mtime <= written
    ]
    return max(candidates, key=lambda folder: (folder / "resolved.yaml").stat().st_mtime, default=None)


def _report_file(invocation: Path, run_config) -> Path | None:
    """reports/<suite>.md as that run wrote it (reports_dir is relative to the run's working folder)."""
    import json

    for stage_file in invocation.glob("*.json"):
        if stage_file.name.endswith(".outcome.json"):
            continue
        try:
            working = json.loads(stage_file.read_text())["invocation"]["working_dir"]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        report = Path(working) / run_config.suite.reports_dir / f"{run_config.suite.name}.md"
        return report if report.is_file() else None
    return None
