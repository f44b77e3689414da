"""What running a stage came to: its outcome record, as executors, the pipeline and the CLI read it."""

from __future__ import annotations

from pathlib import Path

from harness.metrics.catalog import headline_metrics
from harness.plan import Stage
from harness.runs import OutputFolder

COMPLETE, SKIPPED, FAILED, BLOCKED = "complete", "skipped", "failed", "blocked"


def outcome(stage: Stage, status: str, **fields) -> dict:
    return {
        "stage": stage.id,
        "kind": stage.kind,
        "cell": stage.cell,
        "status": status,
        "run_id": None,
        "summary": {},
        "failure": "",
        "bad_input": False,
        "timings": [],
        **fields,
    }


def skipped_outcome(stage: Stage) -> dict:
    """A complete stage, as a rerun finds it: a cell's run id and summary are in its completion marker."""
    info = OutputFolder(Path(stage.folder)).info() if stage.folder else {}
    return outcome(stage, SKIPPED, run_id=info.get("run_id"), summary=info.get("summary", {}))


def one_line(error: BaseException) -> str:
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0]}" if text else type(error).__name__


def headline(summary: dict) -> str:

    return "  ".join(f"{key}={summary[key]:.3f}" for key in headline_metrics() if key in summary)
