"""Where a stage's files are: the stage file an executor hands on, its outcome and its log."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from harness.plan import Stage
from harness.runs import write_json


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


def stage_file(invocation: Invocation, stage: Stage) -> Path:
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
