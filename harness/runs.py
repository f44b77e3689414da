"""Run folders: every stage writes into its own folder and marks completion last, so a folder is either
complete (and skipped by a rerun) or incomplete (and started over, or resumed where the stage can).

Layout under `<output_dir>/<suite>/`:
  prepare/seed<S>-<hash>/{task, base, sft, reward_model}/   per seed: data, base model, SFT, reward model
  cells/<algorithm>-s<S>-<hash>/{train, eval}/               per (algorithm, seed) cell
The hash is the fingerprint of exactly the configuration that determines the folder's contents.

A complete stage's folder is read-only. Its marker records the size of every file it held when it completed
(trainer resume checkpoints aside) and which sub-folders are stages of their own; a file deleted since, or cut
short, or of any other size now (sizes catch truncation and deletion; a same-size bit flip is not looked for)
makes the stage incomplete again: `done` says so in one warning line naming the stage and the file, and the
run recomputes the stage. What was computed from the lost file is kept: stages are named
by the configuration that determines them, not by the bytes of their inputs, so a recomputed stage gives
its dependents an input of the same configuration (on the CPU the very same bytes: test_faults.py checks it)
and they are not recomputed. A lost file that nothing reads any more (an SFT model whose cells are all
complete) costs its own stage's recomputation and nothing else.

Writing a stage on a full disk: `OutputFolder.writing()` turns the error (ENOSPC or a quota, however a library wraps
it) into one line naming the folder, and `complete()` never leaves a marker over half-written files.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import shutil
from pathlib import Path

from harness.errors import UserError

logger = logging.getLogger(__name__)

COMPLETE_MARKER = "complete.json"
# Where `done` moves the marker of a stage whose files changed after it completed: the stage is incomplete,
# and what it recorded stays readable until the stage completes again.
INVALID_MARKER = "complete.json.invalid"
CONTENTS_KEY = "harness.contents"
# A training stage's resume checkpoints (transformers' checkpoint-N, and tmp-checkpoint-N while one is being
# written) are pruned and rewritten while it trains and never read once it is complete: not part of its record.
RESUME_CHECKPOINT_PREFIXES = ("checkpoint-", "tmp-checkpoint-")


# The TRL Trainer's resume checkpoints, under a training stage's folder (harness/algorithms/trl_support.py).
RESUME_CHECKPOINTS_DIR = "trainer"


def discard_resume_checkpoints(folder: Path) -> None:
    """Delete a training stage's resume checkpoints once its final model is saved, just before it is marked
    complete. They exist only to resume an interrupted attempt, and transformers writes their optimizer,
    scheduler and RNG states with torch.save (optimizer.pt, scheduler.pt, rng_state.pth: pickles) in a format we
    cannot change without re-implementing its resume; a complete stage is never resumed, so no pickle outlives
    it. A kill between this and the marker costs that stage a restart from step 0, nothing worse."""
    shutil.rmtree(Path(folder) / RESUME_CHECKPOINTS_DIR, ignore_errors=True)


class OutputFolder:
    """A stage's output folder: its contents are valid only once its completion marker exists and the files it
    records are all still there, each with the size it had when the stage completed."""

    def __init__(self, folder: Path):
        self.folder = folder

    @property
    def done(self) -> bool:
        """Complete, with every recorded file intact. A stage whose files changed since it completed is made
        incomplete here (one warning line naming the stage and the file), so the caller recomputes it."""
        if not (self.folder / COMPLETE_MARKER).is_file():
            return False
        problem = self.verify()
        if problem is None:
            return True
        logger.warning("%s: the stage is recomputed", problem)
        return False

    def verify(self) -> str | None:
        """None while the stage is complete and intact; else why not, in one line naming the stage and the
        file, after making the stage (and a nested stage that lost the file) incomplete."""
        marker = self.folder / COMPLETE_MARKER
        try:
            record = read_json(marker)
        except FileNotFoundError:
            return f"stage '{self.folder}' is not complete"
        except (OSError, ValueError):
            problem = f"stage '{self.folder}' has an unreadable completion marker '{COMPLETE_MARKER}'"
            self._invalidate()
            return problem
        contents = record.get(CONTENTS_KEY) if isinstance(record, dict) else None
        if not isinstance(contents, dict):  # a marker from before contents were recorded: trusted as it is
            return None
        problem = None
        for relative, size in sorted(contents.get("files", {}).items()):
            try:
                actual = (self.folder / relative).stat().st_size
            except FileNotFoundError:
                problem = f"stage '{self.folder}' was complete, but its file '{relative}' has been deleted since"
                break
            except OSError as error:
                problem = (
                    f"stage '{self.folder}' was complete, but its file '{relative}' cannot be read ({error.strerror})"
                )
                break
            if actual != size:
                problem = (
                    f"stage '{self.folder}' was complete, but its file '{relative}' has {actual} bytes, not the "
                    f"{size} it was written with (truncated or rewritten since)"
                )
                break
        if problem is None:
            for nested in contents.get("stages", []):
                part = OutputFolder(self.folder / nested)
                if not (part.folder / COMPLETE_MARKER).is_file():  # found damaged (and said so) already
                    problem = f"stage '{self.folder}' was complete, but its part '{nested}' is not complete any more"
                else:
                    problem = part.verify()  # names the nested stage and its file
                if problem is not None:
                    break
        if problem is not None:
            self._invalidate()
        return problem

    def begin(self, keep_partial: bool = False) -> Path:
        """Start the stage. What an interrupted attempt left is removed first, unless `keep_partial`: a
        training stage keeps its trainer checkpoints to resume from (the folder's hash guarantees they
        belong to the same configuration)."""
        if self.folder.exists() and not keep_partial:
            shutil.rmtree(self.folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / COMPLETE_MARKER).unlink(missing_ok=True)  # a stage being begun is not complete
        return self.folder

    def complete(self, info: dict | None = None) -> None:
        """Mark the stage complete, recording its files' sizes. On a full disk the marker is not written
        (nor half written) and OutOfSpace names the folder."""
        record = dict(info or {})
        record[CONTENTS_KEY] = self._contents()
        try:
            write_json(self.folder / COMPLETE_MARKER, record)
        except OSError as error:
            reason = out_of_space(error, self.folder)
            if reason is None:
                raise
            raise OutOfSpace(self.folder, reason) from error
        (self.folder / INVALID_MARKER).unlink(missing_ok=True)

    def info(self) -> dict:
        record = read_json(self.folder / COMPLETE_MARKER)
        record.pop(CONTENTS_KEY, None)
        return record

    @contextlib.contextmanager
    def writing(self):
        """Around the code that fills the stage: running out of disk space or quota there (ENOSPC, EDQUOT,
        EFBIG, however a library wraps it: safetensors, torch.save) raises OutOfSpace, one line naming this
        folder. The stage stays incomplete; a rerun once space is free completes it (a training stage resumes
        from its newest complete trainer checkpoint)."""
        try:
            yield self.folder
        except OutOfSpace:
            raise
        except Exception as error:
            reason = out_of_space(error, self.folder)
            if reason is None:
                raise
            raise OutOfSpace(self.folder, reason) from error

    def _contents(self) -> dict:
        """{"files": {relative path: size}, "stages": [relative folders that are stages of their own]}."""
        files: dict[str, int] = {}
        stages: list[str] = []

        def walk(folder: Path, relative: str) -> None:
            for entry in sorted(os.scandir(folder), key=lambda e: e.name):
                name = f"{relative}{entry.name}"
                if entry.is_dir(follow_symlinks=False):
                    if entry.name.startswith(RESUME_CHECKPOINT_PREFIXES):
                        continue
                    if (Path(entry.path) / COMPLETE_MARKER).is_file():
                        stages.append(name)
                    else:
                        walk(Path(entry.path), f"{name}/")
                elif relative or entry.name not in (COMPLETE_MARKER, INVALID_MARKER, f"{COMPLETE_MARKER}.tmp"):
                    with contextlib.suppress(OSError):  # a dangling link holds nothing to check
                        files[name] = entry.stat().st_size

        if self.folder.is_dir():
            walk(self.folder, "")
        return {"files": files, "stages": stages}

    def _invalidate(self) -> None:
        with contextlib.suppress(FileNotFoundError):  # another process may have done it first
            (self.folder / COMPLETE_MARKER).replace(self.folder / INVALID_MARKER)


class RunRefused(UserError, RuntimeError):
    """A run that cannot start here (unwritable folder, a suite locked by another process); one line."""


class RunLockedError(RunRefused):
    """Another harness process holds the suite's lock; the message names the folder and that process."""


class OutOfSpace(RunRefused):
    """A stage's folder ran out of disk space or quota while it was written; one line naming the folder."""

    def __init__(self, folder: Path, reason: str):
        self.folder = folder
        super().__init__(
            f"out of disk space writing '{folder}' ({reason}): the stage is left incomplete; "
            "free space and rerun the same command (complete stages are kept)"
        )


# ENOSPC: the device is full; EDQUOT: the user's quota is; EFBIG: the file outgrew what the file system (or
# `ulimit -f`) allows. Libraries that wrap the OS error keep its words: safetensors' Rust I/O error says
# "No space left on device (os error 28)".
NO_SPACE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
NO_SPACE_WORDS = (
    "No space left on device",
    "os error 28",
    "Disk quota exceeded",
    "os error 122",
    "File too large",
    "os error 27",
)
# torch.save reports a failed write without the OS error ("PytorchStreamWriter failed writing file",
# "unexpected pos 576 vs 534" after "basic_ios::clear: iostream error"): a write error of that kind, with the
# folder's device nearly full right after, is a full disk.
WRITE_FAILURE_WORDS = ("PytorchStreamWriter", "inline_container", "iostream error", "file write failed")
LOW_SPACE_BYTES = 64 * 2**20


def out_of_space(error: BaseException, folder: Path | None = None) -> str | None:
    """Why `error` (or an error it wraps, through __cause__ and __context__) means the disk or quota is full,
    in a few words; None when it does not."""
    chain, current = [], error
    while current is not None and all(current is not seen for seen in chain):
        chain.append(current)
        current = current.__cause__ or current.__context__
    for item in chain:
        if isinstance(item, OSError) and item.errno in NO_SPACE_ERRNOS:
            return os.strerror(item.errno)
        text = str(item)
        for words in NO_SPACE_WORDS:
            if words in text:
                return words
    if folder is not None and any(words in str(item) for item in chain for words in WRITE_FAILURE_WORDS):
        free = free_bytes(folder)
        if free is not None and free < LOW_SPACE_BYTES:
            return f"a write failed with {free // 1024} KiB left on the device"
    return None


def free_bytes(folder: Path) -> int | None:
    """Bytes this user may still write on the device of `folder` (or of its nearest existing ancestor)."""
    existing = Path(folder)
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    try:
        stats = os.statvfs(existing)
    except OSError:
        return None
    return stats.f_bavail * stats.f_frsize


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
    """Write through a temporary file and rename, so a reader never sees half a file (and a write that fails,
    on a full disk, leaves no temporary file behind)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(path.suffix + ".tmp")
    try:
        with open(temporary, "w") as handle:
            handle.write(json.dumps(data, indent=2, sort_keys=True, default=str))
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    temporary.replace(path)


def read_json(path: Path):
    return json.loads(path.read_text())


def manifest(config_hash: str, data_fingerprint: str) -> dict:
    """Versions, commit, data and hardware: what a number needs to be traced back to its origin."""
    import importlib.metadata
    import os
    import platform

    versions = {}
    for package in (
        "harness",
        "torch",
        "transformers",
        "trl",
        "peft",
        "accelerate",
        "datasets",
        "mlflow",
        "omegaconf",
        "sacrebleu",
        "rouge-score",
        "vllm",
    ):
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
