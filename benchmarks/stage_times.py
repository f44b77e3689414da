"""Where the wall time of `harness run suite=tiny` goes: stage by stage, and (with --profile) by activity.

    .venv/bin/python benchmarks/stage_times.py [--keep DIR] [--profile] [key=value ...]

Runs the command as a user does (a subprocess, a fresh temporary directory, so nothing is resumed), then reads the
per-stage timings the pipeline writes to runs/<suite>/timings.json.

--profile runs it serially in one process (executor.max_parallel=1) under py-spy (`pip install py-spy`), sampling
the main thread's stack 20 times a second without pausing it, idle waits included, and gives every sample to the innermost frame that
names an activity (ACTIVITIES, in that order of precedence): imports, model build/load, trainer construction,
dataset building, generation, optimisation, scoring, judging, MLflow logging, checkpoint writing, the report;
the rest is "other". Samples are wall time, so the activities add up to the run.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

SAMPLES_PER_SECOND = 20

# (activity, pattern over one frame "function (file:line)"). A sample goes to the innermost frame that matches
# any pattern; where one frame matches several, the first listed wins.
ACTIVITIES = [
    ("imports", r"<frozen importlib\._bootstrap"),
    ("MLflow logging", r"/mlflow/|harness/tracking(_retry)?\.py"),
    ("checkpoint writing", r"save_pretrained|save_model \(|_save_checkpoint|save_file \(|save_snapshot|save_policy"),
    ("model build/load", r"from_pretrained|harness/modeling\.py|harness/stages/base_model\.py"),
    ("dataset building", r"/datasets/|_prepare_dataset|tokenize_row|harness/tasks/"),
    ("generation", r"generation/utils\.py|harness/generation/|/vllm/"),
    ("judging", r"harness/judges/"),
    ("scoring", r"harness/metrics/|harness/rewards\.py|harness/logprobs\.py|score_rollout"),
    ("optimisation", r"\bbackward \(|optimizer\.py|training_step \(|compute_loss \(|harness/algorithms/ppo_math"),
    ("trainer construction", r"__init__ \(.*(/trl/trainer/|transformers/trainer\.py)|accelerator\.py|\bprepare \("),
    ("report", r"harness/report/"),
]


def main(overrides: list[str], keep: str | None = None, profile: bool = False) -> None:
    with tempfile.TemporaryDirectory() as temporary:
        folder = Path(keep or temporary)
        folder.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-m", "harness", "run", "suite=tiny", *overrides]
        if profile:
            stacks = folder / "stacks.txt"
            spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
            command = [
                spy,
                "record",
                "--format",
                "raw",
                "--idle",
                "--nonblocking",  # never pause the run to sample it (pausing made SFT several times slower)
                "--threads",
                "--rate",
                str(SAMPLES_PER_SECOND),
                "--output",
                str(stacks),
                "--",
                *command,
                "executor.max_parallel=1",
            ]
        started = time.perf_counter()
        result = subprocess.run(command, cwd=folder, capture_output=True, text=True)
        total = time.perf_counter() - started
        if result.returncode != 0:
            sys.exit(f"harness run failed ({result.returncode}):\n{result.stderr[-2000:]}")
        timings = json.loads((folder / "runs" / "tiny" / "timings.json").read_text())
        print_stages(timings, total)
        if profile:
            print_activities(stacks.read_text())


def print_stages(timings: list[dict], total: float) -> None:
    by_kind: dict[str, float] = defaultdict(float)
    print(f"{'stage':<40} {'kind':<9} {'seconds':>8} {'share':>7}")
    for timing in timings:
        by_kind[timing["kind"]] += timing["seconds"]
        print(f"{timing['stage']:<40} {timing['kind']:<9} {timing['seconds']:8.1f} {timing['seconds'] / total:7.1%}")
    measured = sum(by_kind.values())
    print()
    print(f"total wall time (process start to exit): {total:.1f} s")
    for kind in ("train", "generate", "score", "other"):
        print(f"  {kind:<9} {by_kind[kind]:7.1f} s  {by_kind[kind] / total:6.1%}")
    unattributed = total - measured
    print(
        f"  unattributed (start-up, imports, MLflow, between stages) {unattributed:7.1f} s  {unattributed / total:6.1%}"
    )


def activity_of(frames: list[str]) -> str:
    """The activity of one sample: its innermost frame that matches an ACTIVITIES pattern."""
    for frame in reversed(frames):
        for activity, pattern in ACTIVITIES:
            if re.search(pattern, frame):
                return activity
    return "other"


def print_activities(raw: str) -> None:
    """The main thread's samples of py-spy's raw output ("thread (id)[: name];frame;...;frame count", root first)."""
    samples = []
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        thread, *frames = stack.split(";")
        samples.append((re.match(r"thread \((\d+)\)", thread).group(1), "MainThread" in thread, frames, int(count)))
    main_thread = next(thread for thread, named_main, _, _ in samples if named_main)
    seconds: Counter[str] = Counter()
    for thread, _, frames, count in samples:
        if thread == main_thread:
            seconds[activity_of(frames)] += count / SAMPLES_PER_SECOND
    total = sum(seconds.values())
    print()
    print(f"by activity (py-spy, main thread, {total:.1f} s sampled):")
    for activity, value in seconds.most_common():
        print(f"  {activity:<22} {value:7.1f} s  {value / total:6.1%}")


if __name__ == "__main__":
    arguments = sys.argv[1:]
    keep = None
    if arguments[:1] == ["--keep"]:
        keep, arguments = arguments[1], arguments[2:]
    profiling = "--profile" in arguments
    main([argument for argument in arguments if argument != "--profile"], keep, profiling)
