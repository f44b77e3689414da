"""No pickle anywhere a finished run leaves files: run folders (SFT, reward model, judge, policies, snapshots,
resume checkpoints) and MLflow's artifacts, all under the run's working directory.

A pickle runs arbitrary code when it is loaded (`torch.load(weights_only=False)`), and users share these
folders. The scaled-down tiny run here also trains the judge, evaluates an intermediate checkpoint (snapshots)
and writes resume checkpoints every two optimizer steps, so every writer of a model folder takes part.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest
from conftest import SCALED_DOWN_TINY, run_harness

pytestmark = pytest.mark.slow

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle")
# Pickle protocols 2-5 open with the PROTO opcode; torch.save's default format is a zip holding data.pkl.
PICKLE_PROTO_OPCODE = 0x80
WRITERS_OF_EVERY_FOLDER = [
    *SCALED_DOWN_TINY,
    "only=[dpo,grpo]",
    "judge.kind=trained",  # the judge's folder (harness/judges/training.py)
    "evaluation.checkpoints=1",  # snapshots of an intermediate checkpoint
    "checkpoint_every=2",  # the Trainer's resume checkpoints (optimizer, scheduler, RNG state)
]


def pickled_files(root: Path) -> list[str]:
    """Files under `root` that are pickles: by name (*.bin, *.pt, *.pth, *.pkl), a raw pickle stream, or
    torch.save's zip format (which torch.load can only open by unpickling its data.pkl)."""
    found = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        if path.suffix in PICKLE_SUFFIXES or _is_pickle_stream(path) or _is_torch_zip(path):
            found.append(str(path.relative_to(root)))
    return found


def _is_pickle_stream(path: Path) -> bool:
    with open(path, "rb") as handle:
        head = handle.read(2)
    return len(head) == 2 and head[0] == PICKLE_PROTO_OPCODE and 2 <= head[1] <= 5


def _is_torch_zip(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith("data.pkl") for name in archive.namelist())


def refused_by_safe_load(root: Path, relative_paths: list[str]) -> list[str]:
    """The pickled files `torch.load(weights_only=True)` refuses: they could only be read by running code."""
    import torch

    refused = []
    for relative in relative_paths:
        try:
            torch.load(root / relative, weights_only=True, map_location="cpu")
        except Exception:  # noqa: BLE001 - any refusal counts; the test names the file
            refused.append(relative)
    return refused


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("no-pickles")
    result = run_harness(cwd, *WRITERS_OF_EVERY_FOLDER)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return cwd


def test_the_run_wrote_every_kind_of_folder(finished_run):
    """Not a vacuous pass: the folders the walk covers exist and hold weights or artifacts."""
    runs = finished_run / "runs" / "tiny"
    weights = [str(path.relative_to(runs)) for path in runs.rglob("model.safetensors")]
    for folder in (
        "prepare/sft-s0-",
        "prepare/reward_model-s0-",
        "prepare/judge-s0-",
        "cells/dpo-s0-",
        "cells/grpo-s0-",
    ):
        assert any(path.startswith(folder) for path in weights), (folder, weights)
    assert any("/snapshots/step-" in path for path in weights), weights
    artifacts = finished_run / "runs" / "artifacts"
    assert any(artifacts.rglob("samples.jsonl")) and any(artifacts.rglob("*.png")), "no MLflow artifacts"


def test_no_pickle_in_run_folders_or_mlflow_artifacts(finished_run):
    found = pickled_files(finished_run)
    refused = refused_by_safe_load(finished_run, found)
    assert found == [], f"pickles left in the run: {found} (of which torch.load(weights_only=True) refuses {refused})"


def test_the_detector_finds_each_kind_of_pickle(tmp_path):
    """The oracle of the walk: a torch.save file under a neutral name, a raw pickle and a *.bin are found;
    safetensors and JSON are not."""
    import pickle

    import torch
    from safetensors.torch import save_file

    torch.save({"step": 3}, tmp_path / "state.data")
    (tmp_path / "raw").write_bytes(pickle.dumps({"a": 1}, protocol=4))
    (tmp_path / "training_args.bin").write_bytes(b"\x00")
    save_file({"w": torch.zeros(2)}, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text("{}")
    assert pickled_files(tmp_path) == ["raw", "state.data", "training_args.bin"]
