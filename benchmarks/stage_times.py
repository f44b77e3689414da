"""Time `harness run suite=tiny` stage by stage, and the share of wall time outside training and generation.

    .venv/bin/python benchmarks/stage_times.py [--keep DIR] [key=value ...]

Runs the command as a user does (a subprocess, a fresh temporary directory, so nothing is resumed), then
reads the per-stage timings the pipeline writes to runs/<suite>/timings.json. "Outside training and
generation" is everything else: process start and imports, task data, building the base model, scoring
(reward models, KL forward passes, BLEU/ROUGE), MLflow logging and the report.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path


def main(overrides: list[str], keep: str | None = None) -> None:
    with tempfile.TemporaryDirectory() as temporary:
        folder = keep or temporary
        Path(folder).mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        result = subprocess.run(
            [sys.executable, "-m", "harness", "run", "suite=tiny", *overrides],
            cwd=folder,
            capture_output=True,
            text=True,
        )
        total = time.perf_counter() - started
        if result.returncode != 0:
            sys.exit(f"harness run failed ({result.returncode}):\n{result.stderr[-2000:]}")
        timings = json.loads((Path(folder) / "runs" / "tiny" / "timings.json").read_text())

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
    print(
        f"  unattributed (start-up, imports, MLflow, between stages) {total - measured:7.1f} s  {(total - measured) / total:6.1%}"
    )
    outside = total - by_kind["train"] - by_kind["generate"]
    print(f"share outside training and generation: {outside / total:.1%}")
    print(f"harness overhead (outside training, generation and scoring): {(outside - by_kind['score']) / total:.1%}")


if __name__ == "__main__":
    arguments = sys.argv[1:]
    keep = None
    if arguments[:1] == ["--keep"]:
        keep, arguments = arguments[1], arguments[2:]
    main(arguments, keep)
