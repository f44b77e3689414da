"""Faults of shared infrastructure, injected for real (issue 15):

- corrupt artefacts: a complete stage whose safetensors file was truncated or deleted afterwards is detected
  when the next run uses it (one warning line naming the stage and the file) and recomputed, to the same
  bytes and the same final numbers;
- a full disk: a real small file system (tmpfs, mounted by the test as root) fills up during a checkpoint
  save; no stage is left marked complete over a half-written checkpoint, the failure is one line naming the
  folder, and the same command completes once space is freed.

The end-to-end tests run `harness run` as a user does (a subprocess) on a scaled-down tiny suite restricted to
DPO, starting from copies of one uninterrupted run made once for the module, which itself starts from the
session's shared prepared stages (prepared.py) and runs its cells only.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import SCALED_DOWN_TINY, run_harness
from prepared import with_prepared_stages

from harness.runs import COMPLETE_MARKER, INVALID_MARKER, OutOfSpace, OutputFolder, out_of_space

# DPO only, no intermediate evaluations: the smallest run that has every kind of stage (task data, base model,
# SFT, reward model, a training cell, evaluations), with the shared run's prepared stages.
OVERRIDES = [*SCALED_DOWN_TINY, "only=[dpo]", "evaluation.checkpoints=0"]


# ---------------------------------------------------------------------------------------------------------
# Stage records (fast)
# ---------------------------------------------------------------------------------------------------------


def _complete_stage(folder: Path) -> OutputFolder:
    stage = OutputFolder(folder)
    stage.begin()
    (folder / "model").mkdir()
    (folder / "model" / "model.safetensors").write_bytes(b"w" * 1000)
    (folder / "model" / "config.json").write_text("{}")
    (folder / "trainer" / "checkpoint-4").mkdir(parents=True)
    (folder / "trainer" / "checkpoint-4" / "optimizer.pt").write_bytes(b"o" * 100)
    stage.complete({"seconds": 1.0})
    return stage


def test_a_complete_stage_records_its_files_and_keeps_its_info(tmp_path):
    stage = _complete_stage(tmp_path / "sft")
    assert stage.done
    assert stage.info() == {"seconds": 1.0}  # the record is the stage's own business
    record = json.loads((stage.folder / COMPLETE_MARKER).read_text())
    files = record["harness.contents"]["files"]
    assert files == {"model/config.json": 2, "model/model.safetensors": 1000}  # resume checkpoints left out


@pytest.mark.parametrize("damage", ["truncate", "delete", "grow"])
def test_a_changed_file_makes_the_stage_incomplete_with_one_line_naming_it(tmp_path, caplog, damage):
    stage = _complete_stage(tmp_path / "sft")
    weights = stage.folder / "model" / "model.safetensors"
    if damage == "truncate":
        weights.write_bytes(b"w" * 10)
    elif damage == "delete":
        weights.unlink()
    else:
        weights.write_bytes(b"w" * 2000)
    with caplog.at_level(logging.WARNING, logger="harness.runs"):
        assert not stage.done
        assert not stage.done  # asked again: still incomplete, and said only once
    lines = [record.getMessage() for record in caplog.records]
    assert len(lines) == 1 and "\n" not in lines[0]
    assert f"stage '{stage.folder}'" in lines[0] and "'model/model.safetensors'" in lines[0]
    assert (stage.folder / INVALID_MARKER).is_file() and not (stage.folder / COMPLETE_MARKER).exists()
    # The next attempt completes it again.
    stage.begin(keep_partial=True)
    weights.write_bytes(b"w" * 1000)
    stage.complete({"seconds": 2.0})
    assert stage.done and not (stage.folder / INVALID_MARKER).exists()


def test_resume_checkpoints_may_go_without_touching_the_stage(tmp_path):
    stage = _complete_stage(tmp_path / "sft")
    shutil.rmtree(stage.folder / "trainer" / "checkpoint-4")
    assert stage.done


def test_a_stage_made_of_stages_is_incomplete_when_a_part_lost_a_file(tmp_path, caplog):
    cell = OutputFolder(tmp_path / "cell")
    cell.begin()
    train = _complete_stage(cell.folder / "train")
    evaluation = OutputFolder(cell.folder / "eval")
    evaluation.begin()
    (evaluation.folder / "summary.json").write_text("{}")
    evaluation.complete()
    cell.complete({"run_id": "abc"})
    assert json.loads((cell.folder / COMPLETE_MARKER).read_text())["harness.contents"]["stages"] == ["eval", "train"]
    (train.folder / "model" / "model.safetensors").unlink()
    with caplog.at_level(logging.WARNING, logger="harness.runs"):
        assert not cell.done
    assert len(caplog.records) == 1 and f"stage '{train.folder}'" in caplog.records[0].getMessage()
    assert not train.done and evaluation.done  # only the part that lost a file is recomputed


def test_a_marker_from_before_records_is_trusted(tmp_path):
    folder = tmp_path / "old"
    folder.mkdir()
    (folder / COMPLETE_MARKER).write_text(json.dumps({"seconds": 3}))
    assert OutputFolder(folder).done and OutputFolder(folder).info() == {"seconds": 3}


def test_an_unreadable_marker_is_not_complete(tmp_path, caplog):
    folder = tmp_path / "cut"
    folder.mkdir()
    (folder / COMPLETE_MARKER).write_text('{"seconds": ')
    with caplog.at_level(logging.WARNING, logger="harness.runs"):
        assert not OutputFolder(folder).done
    assert "unreadable completion marker" in caplog.records[0].getMessage()


@pytest.mark.parametrize(
    "error",
    [
        OSError(28, "No space left on device"),
        OSError(122, "Disk quota exceeded"),
        RuntimeError("Error while serializing: I/O error: No space left on device (os error 28)"),  # safetensors
    ],
    ids=["ENOSPC", "EDQUOT", "safetensors"],
)
def test_a_full_disk_while_writing_a_stage_is_one_line_naming_its_folder(tmp_path, error):
    stage = OutputFolder(tmp_path / "train")
    stage.begin()
    with pytest.raises(OutOfSpace) as caught:
        with stage.writing():
            raise error
    message = str(caught.value)
    assert "\n" not in message and f"'{stage.folder}'" in message and "rerun the same command" in message
    assert not stage.done


def test_other_errors_pass_through_writing(tmp_path):
    stage = OutputFolder(tmp_path / "train")
    stage.begin()
    with pytest.raises(KeyError):
        with stage.writing():
            raise KeyError("not a disk problem")
    assert out_of_space(ValueError("loss is nan"), tmp_path) is None


# ---------------------------------------------------------------------------------------------------------
# End to end (slow)
# ---------------------------------------------------------------------------------------------------------


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _eval_metrics(tracking_db: Path) -> dict[str, dict[str, float]]:
    """The newest FINISHED cell run of each cell: its eval/* metrics (what the report shows)."""
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{tracking_db}")
    experiment = client.get_experiment_by_name("harness/tiny")
    runs = client.search_runs([experiment.experiment_id], order_by=["attributes.start_time ASC"])
    metrics = {}
    for run in runs:
        if run.data.tags.get("harness.kind") == "cell" and run.info.status == "FINISHED":
            metrics[run.data.tags["harness.cell"]] = {
                k: v for k, v in run.data.metrics.items() if k.startswith("eval/")
            }
    return metrics


def _stage_folder(root: Path, pattern: str) -> Path:
    found = sorted(root.glob(pattern))
    assert len(found) == 1, f"{pattern}: {found}"
    return found[0]


def _assert_every_complete_stage_is_intact(root: Path) -> None:
    """No folder marked complete whose recorded files are missing or cut short."""
    for marker in root.rglob(COMPLETE_MARKER):
        assert OutputFolder(marker.parent).verify() is None, f"complete stage with damaged files: {marker.parent}"


@pytest.fixture(scope="module")
def uninterrupted(scaled_down_run, tmp_path_factory) -> Path:
    """One uninterrupted run, made once; each test works on a copy."""
    cwd = with_prepared_stages(scaled_down_run, tmp_path_factory.mktemp("uninterrupted"))
    result = run_harness(cwd, *OVERRIDES, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return cwd


def _copy(source: Path, target: Path) -> Path:
    shutil.copytree(source, target, symlinks=True)
    return target


@pytest.mark.slow
def test_truncated_and_deleted_artefacts_are_recomputed_to_the_same_numbers(uninterrupted, tmp_path):
    cwd = _copy(uninterrupted, tmp_path / "run")
    root = cwd / "runs" / "tiny"
    before = _eval_metrics(cwd / "runs" / "mlflow.db")
    sft = _stage_folder(root, "prepare/sft-s0-*")
    train = _stage_folder(root, "cells/dpo-s0-*/train")
    evaluation = _stage_folder(root, "cells/dpo-s0-*/eval")
    sft_weights, train_weights = sft / "model" / "model.safetensors", train / "model" / "model.safetensors"
    original = {sft_weights: _sha256(sft_weights), train_weights: _sha256(train_weights)}

    with open(sft_weights, "r+b") as handle:  # a copy cut short by a full disk or a killed rsync
        handle.truncate(sft_weights.stat().st_size // 2)
    train_weights.unlink()  # a clean-up script that went too far
    (evaluation / "samples.jsonl").unlink()

    result = run_harness(cwd, *OVERRIDES, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    warnings = [line for line in result.stderr.splitlines() if "the stage is recomputed" in line]
    assert 3 <= len(warnings) <= 5, result.stderr[-3000:]  # a line per damaged stage (and per cell holding one)
    assert any(f"'{sft}'" in line and "'model/model.safetensors'" in line and "not the" in line for line in warnings)
    assert any(f"'{train}'" in line and "'model/model.safetensors'" in line and "deleted" in line for line in warnings)
    assert any(f"'{evaluation}'" in line and "'samples.jsonl'" in line for line in warnings)
    # Recomputed from the same configuration: the same bytes, and the same final numbers.
    assert {path: _sha256(path) for path in original} == original
    assert _eval_metrics(cwd / "runs" / "mlflow.db") == before
    _assert_every_complete_stage_is_intact(root)  # what a third run would find: nothing to recompute


def _mount_tmpfs(folder: Path, size: str) -> bool:
    folder.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        return False
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True)
    return result.returncode == 0


@pytest.mark.slow
def test_a_full_disk_during_a_checkpoint_save_fails_in_one_line_and_the_rerun_completes(uninterrupted, tmp_path):
    small = tmp_path / "small-disk"
    if not _mount_tmpfs(small, "16m"):
        pytest.skip("needs root to mount a small tmpfs (mount -t tmpfs); the full-disk fault is real or not at all")
    try:
        # The uninterrupted run's prepare stages and SFT baseline on the small disk; the MLflow store stays on
        # a roomy one (a team's tracking server): the fault is the checkpoint save's alone.
        cwd = _copy(uninterrupted, tmp_path / "run")
        shutil.copytree(cwd / "runs" / "tiny", small / "tiny", symlinks=True)
        shutil.rmtree(_stage_folder(small / "tiny", "cells/dpo-s0-*"))
        tracking = ["output_dir=" + str(small), f"tracking.uri=sqlite:///{cwd / 'runs' / 'mlflow.db'}"]
        weights = _stage_folder(cwd / "runs" / "tiny", "cells/dpo-s0-*/train") / "model" / "model.safetensors"
        # Leave room for everything the DPO cell writes before its model, and half of the model.
        statvfs = os.statvfs(small)
        room = 64 * 1024 + weights.stat().st_size // 2
        ballast = small / "ballast"
        ballast.write_bytes(b"\0" * max(0, statvfs.f_bavail * statvfs.f_frsize - room))

        full = run_harness(cwd, *OVERRIDES, *tracking, timeout=600)
        assert full.returncode != 0
        train = _stage_folder(small / "tiny", "cells/dpo-s0-*") / "train"
        assert not (train / COMPLETE_MARKER).exists()
        _assert_every_complete_stage_is_intact(small / "tiny")
        failures = [line for line in (full.stdout + full.stderr).splitlines() if "out of disk space writing" in line]
        assert failures and f"'{train}'" in failures[0], (full.stdout + full.stderr)[-3000:]
        assert "Traceback" not in full.stderr, full.stderr[-3000:]

        ballast.unlink()  # space is freed
        rerun = run_harness(cwd, *OVERRIDES, *tracking, timeout=600)
        assert rerun.returncode == 0, (rerun.stdout + rerun.stderr)[-3000:]
        assert _eval_metrics(cwd / "runs" / "mlflow.db") == _eval_metrics(uninterrupted / "runs" / "mlflow.db")
        _assert_every_complete_stage_is_intact(small / "tiny")
    finally:
        subprocess.run(["umount", "-l", str(small)], capture_output=True)
