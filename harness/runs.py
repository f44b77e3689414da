"""Run folders: every stage writes into its own folder and marks completion last, so a folder is either
complete (and skipped by a rerun) or incomplete (and started over, or resumed where the stage can).

Layout under `<output_dir>/<suite>/`:
  prepare/seed<S>-<hash>/{task, base, sft, reward_model}/   per seed: data, base model, SFT, reward model
  cells/<algorithm>-s<S>-<hash>/{train, eval}/               per (algorithm, seed) cell
The hash is the fingerprint of exactly the configuration that determines the folder's contents.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

logger = logging.getLogger(__name__)

COMPLETE_MARKER = "complete.json"


class Stage:
    """A folder whose contents are valid only once its completion marker exists."""

    def __init__(self, folder: Path):
        self.folder = folder

    @property
    def done(self) -> bool:
        return (self.folder / COMPLETE_MARKER).is_file()

    def begin(self, keep_partial: bool = False) -> Path:
        """Start the stage. What an interrupted attempt left is removed first, unless `keep_partial`: a
        training stage keeps its trainer checkpoints to resume from (the folder's hash guarantees they
        belong to the same configuration)."""
        if self.folder.exists() and not keep_partial:
            shutil.rmtree(self.folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        return self.folder

    def complete(self, info: dict | None = None) -> None:
        write_json(self.folder / COMPLETE_MARKER, info or {})

    def info(self) -> dict:
        return read_json(self.folder / COMPLETE_MARKER)


class RunRefused(RuntimeError):
    """A run that cannot start here (unwritable folder, a suite locked by another process); one line."""


class RunLockedError(RunRefused):
    """Another harness process holds the suite's lock; the message names the folder and that process."""


class SuiteLock:
    """An exclusive lock on a suite's run folder for the length of one `harness run`.

    Two runs of one suite at once would race on the same stage folders and MLflow cells; the second is
    refused at once with the first's pid. The lock is an OS file lock, so a killed process releases it.
    """

    def __init__(self, root: Path):
        self.path = root / ".lock"
        self.handle = None

    def __enter__(self):
        import fcntl
        import os

        self.handle = open(self.path, "a+")
        try:
            fcntl.flock(self.handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.handle.seek(0)
            holder = self.handle.read().strip() or "unknown"
            self.handle.close()
            raise RunLockedError(
                f"another harness run (pid {holder}) is using '{self.path.parent}'; wait for it, or pass another output_dir="
            ) from None
        self.handle.seek(0)
        self.handle.truncate()
        self.handle.write(str(os.getpid()))
        self.handle.flush()
        return self

    def __exit__(self, *exc):
        import fcntl

        fcntl.flock(self.handle, fcntl.LOCK_UN)
        self.handle.close()
        return False


def require_writable(folder: Path) -> None:
    """Refuse an output folder that cannot be written, leaving nothing behind.

    A probe file is created and removed in the nearest existing ancestor: permission bits alone say
    "writable" to root even on a read-only file system, and a full disk only shows when writing.
    """
    import tempfile

    existing = folder
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise RunRefused(f"output_dir '{folder}' is not a folder ('{existing}' is a file)")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as error:
        raise RunRefused(f"output_dir '{folder}' is not writable: {error.strerror} in '{existing}'") from None


def write_json(path: Path, data) -> None:
    """Write through a temporary file and rename, so a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(path.suffix + ".tmp")
    temporary.write_text(json.dumps(data, indent=2, sort_keys=True, default=str))
    temporary.replace(path)


def read_json(path: Path):
    return json.loads(path.read_text())


class SuitePaths:
    def __init__(self, output_dir: Path, suite: str):
        self.root = output_dir / suite

    def prepare(self, seed: int, prepare_hash: str) -> Path:
        return self.root / "prepare" / f"seed{seed}-{prepare_hash}"

    def cell(self, cell_name: str, cell_hash: str) -> Path:
        return self.root / "cells" / f"{cell_name}-{cell_hash}"


def manifest(config_hash: str, data_fingerprint: str) -> dict:
    """Versions, commit, data and hardware: what a number needs to be traced back to its origin."""
    import importlib.metadata
    import os
    import platform

    versions = {}
    for package in ("harness", "torch", "transformers", "trl", "peft", "accelerate", "datasets", "mlflow", "omegaconf", "sacrebleu", "rouge-score", "vllm"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    repo = Path(__file__).resolve().parent.parent
    commit = _git(repo, "rev-parse", "HEAD")
    dirty = bool(_git(repo, "status", "--porcelain", "--untracked-files=no"))
    hardware = {"platform": platform.platform(), "python": platform.python_version(), "cpu_count": os.cpu_count()}
    try:
        import torch

        hardware["cuda"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
        hardware["torch_threads"] = torch.get_num_threads()
    except ImportError:
        pass
    return {
        "versions": versions,
        "git_commit": commit,
        "git_dirty": dirty,
        "config_hash": config_hash,
        "data_fingerprint": data_fingerprint,
        "hardware": hardware,
    }


def _git(repo: Path, *args: str) -> str | None:
    import subprocess

    try:
        result = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout.strip() if result.returncode == 0 else None
