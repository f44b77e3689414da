"""Reading real datasets for the task adapters: Hub ids and local files alike, with one-line row errors.

A *source* is either a Hugging Face Hub dataset id (``"trl-lib/tldr"``), read with
``datasets.load_dataset(id, name, split=..., revision=...)``, or a local path:

* a ``.jsonl`` file (one JSON object per line; blank lines are skipped),
* a ``.json`` file holding a list of objects, or an object mapping split names to such lists,
* a ``.parquet`` file,
* a folder written by ``Dataset.save_to_disk`` or ``DatasetDict.save_to_disk`` (read with
  ``datasets.load_from_disk``; a ``DatasetDict`` gives the requested split),
* a folder of such files, where a split's files are ``<split>.<ext>``, ``<split>-*.<ext>`` (the Hub's
  ``train-00000-of-00001.parquet``) or any supported file under a sub-folder named ``<split>``.

A single local file is not split-aware: every split read from it gives the same rows. A location that does
not exist is taken as a local path when it can only be one (it starts with ``/``, ``./``, ``~``, ends with a
file suffix, or has more than one ``/``), so a typo fails here instead of at the Hub; otherwise it is a Hub id.

Rows are plain dicts in source order, read lazily; an adapter keeps the first N (`take_converted`), so a
scaled-down run reads the same rows every time. Nothing is ever unpickled (JSON, Parquet and Arrow only), and
a Hub dataset's loading script is only allowed when the task's config sets ``trust_remote_code`` (and the
installed ``datasets`` still runs scripts at all; versions 4 and later do not).

Problems with the data raise :class:`TaskDataError`, whose message is one line naming the file (or dataset
id and split) and the row index (0-based, in source order), e.g.
``tests/fixtures/tasks/tldr/sft/train.jsonl row 3: missing column 'completion'``.
"""

from __future__ import annotations

import hashlib
import inspect
import itertools
import json
import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.errors import require
from harness.tasks.common import TaskDataError  # re-exported: the adapters raise it from here

logger = logging.getLogger(__name__)

LOCAL_FILE_SUFFIXES = (".jsonl", ".json", ".parquet")
# Every adapter's Config has these size limits; each feeds a stage, so each must be at least 1.
LIMIT_FIELDS = (
    "num_sft_examples",
    "num_preference_pairs",
    "num_heldout_pairs",
    "num_train_prompts",
    "num_eval_prompts",
)
MESSAGE_ROLES = ("system", "user", "assistant")
# Values quoted in error messages are cut to this many characters so that a message stays one short line.
QUOTE_LIMIT = 60


def one_line(text: str, limit: int = QUOTE_LIMIT) -> str:
    """`text` as a short single-line quotation (newlines escaped, long text cut with '...')."""
    flat = text.replace("\r", "\\r").replace("\n", "\\n")
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def row_error(where: str, index: int, problem: str) -> TaskDataError:
    return TaskDataError(f"{one_line(where, 200)} row {index}: {one_line(problem, 240)}")


@dataclass(frozen=True)
class SourceRow:
    """One row of a source, with where it came from, so that an error can name the file and row."""

    where: str
    index: int
    data: dict


@dataclass(frozen=True)
class Source:
    """Where one split of a dataset comes from: a Hub id or a local path, and how to load it."""

    location: str
    # a Hub dataset id or a local path (file or folder)
    split: str
    revision: str | None = None
    # a Hub commit sha or tag; None is the main branch (the run manifest records what was asked for)
    name: str | None = None
    # the Hub dataset's config name ("main" for openai/gsm8k)
    data_dir: str | None = None
    # a sub-folder of the Hub repository ("helpful-base" for Anthropic/hh-rlhf)
    trust_remote_code: bool = False

    @property
    def is_local(self) -> bool:
        return is_local_path(self.location)

    def describe(self) -> str:
        """How the source reads in logs and in error messages about the source as a whole."""
        if self.is_local:
            return f"{self.location} [{self.split}]"
        extras = [f"{key}={value}" for key, value in (("name", self.name), ("data_dir", self.data_dir)) if value]
        extras.append(f"revision={self.revision or 'main'}")
        return f"{self.location}[{self.split}] ({', '.join(extras)})"


def is_local_path(location: str) -> bool:
    """A path that exists, or one that can only be meant as a path (so that a typo is not sent to the Hub)."""
    if Path(location).expanduser().exists():
        return True
    looks_like_path = location.startswith(("/", "./", "../", "~")) or location.endswith(LOCAL_FILE_SUFFIXES)
    return looks_like_path or location.count("/") > 1  # a Hub id is "owner/name"


# ---------------------------------------------------------------------------------------------------------
# Reading rows
# ---------------------------------------------------------------------------------------------------------


def iter_source_rows(source: Source) -> Iterator[SourceRow]:
    """The rows of `source` in order, lazily, so that taking the first N never reads a whole Hub split."""
    if source.is_local:
        return _iter_local(Path(source.location).expanduser(), source.location, source.split)
    return _iter_hub(source)


def _iter_local(path: Path, shown: str, split: str) -> Iterator[SourceRow]:
    if not path.exists():
        raise TaskDataError(f"{shown}: no such file or folder")
    if path.is_file():
        return _iter_file(path, shown, split)
    if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
        return _iter_saved_dataset(path, shown, split)
    return _iter_split_files(path, shown, split)


def _iter_file(path: Path, shown: str, split: str) -> Iterator[SourceRow]:
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return _iter_jsonl(path, shown)
    if suffix == ".json":
        return _iter_json(path, shown, split)
    if suffix == ".parquet":
        return _iter_parquet(path, shown)
    raise TaskDataError(
        f"{shown}: unsupported file type '{suffix}'; use .jsonl, .json, .parquet or a save_to_disk folder"
    )


def _iter_jsonl(path: Path, shown: str) -> Iterator[SourceRow]:
    with open(path, encoding="utf-8") as handle:
        index = 0
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                data = json.loads(line)
            except json.JSONDecodeError as error:
                raise row_error(shown, index, f"not valid JSON (line {line_number}: {error.msg})") from None
            yield SourceRow(shown, index, _require_object(data, shown, index))
            index += 1


def _iter_json(path: Path, shown: str, split: str) -> Iterator[SourceRow]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise TaskDataError(f"{shown}: not valid JSON (line {error.lineno}: {error.msg})") from None
    if isinstance(data, dict):
        if split not in data:
            raise TaskDataError(f"{shown}: no split '{split}'; the file has: {', '.join(map(str, data)) or 'nothing'}")
        shown, data = f"{shown} [{split}]", data[split]
    if not isinstance(data, list):
        raise TaskDataError(f"{shown}: expected a list of row objects, got {type(data).__name__}")
    return (SourceRow(shown, index, _require_object(item, shown, index)) for index, item in enumerate(data))


def _iter_parquet(path: Path, shown: str) -> Iterator[SourceRow]:
    import pyarrow.parquet as pq

    index = 0
    # Batches keep memory flat for a large shard; to_pylist gives plain Python values as JSON would.
    for batch in pq.ParquetFile(path).iter_batches(batch_size=1024):
        for data in batch.to_pylist():
            yield SourceRow(shown, index, data)
            index += 1


def _iter_saved_dataset(path: Path, shown: str, split: str) -> Iterator[SourceRow]:
    import datasets

    saved = datasets.load_from_disk(str(path))
    if isinstance(saved, datasets.DatasetDict):
        if split not in saved:
            raise TaskDataError(f"{shown}: no split '{split}'; the saved DatasetDict has: {', '.join(saved)}")
        saved, shown = saved[split], f"{shown} [{split}]"
    return (SourceRow(shown, index, dict(data)) for index, data in enumerate(saved))


def split_files(folder: Path, split: str) -> list[Path]:
    """The supported files of a folder that belong to `split`, sorted (shards stay in order)."""
    found = []
    for path in sorted(folder.rglob("*")):
        if not path.is_file() or path.suffix.lower() not in LOCAL_FILE_SUFFIXES:
            continue
        named_for_split = path.stem == split or path.stem.startswith((f"{split}-", f"{split}_"))
        in_split_folder = split in path.relative_to(folder).parts[:-1]
        if named_for_split or in_split_folder:
            found.append(path)
    return found


def _iter_split_files(folder: Path, shown: str, split: str) -> Iterator[SourceRow]:
    files = split_files(folder, split)
    # A Hub snapshot may hold several configs ("main/", "socratic/"): mixing their rows would be silent.
    directories = sorted({path.parent.relative_to(folder).as_posix() for path in files if path.parent.name != split})
    if len(directories) > 1:
        raise TaskDataError(
            f"{shown}: files for split '{split}' in several folders ({', '.join(directories)}); point the path at one"
        )
    if not files:
        present = sorted(p.name for p in folder.iterdir())
        raise TaskDataError(
            f"{shown}: no file for split '{split}' (expected {split}.jsonl, {split}.parquet, {split}-*.parquet "
            f"or a '{split}' sub-folder); the folder has: {', '.join(present) or 'nothing'}"
        )
    shown_folder = shown.rstrip("/")
    return itertools.chain.from_iterable(
        _iter_file(path, f"{shown_folder}/{path.relative_to(folder).as_posix()}", split) for path in files
    )


def _iter_hub(source: Source) -> Iterator[SourceRow]:
    import datasets

    options: dict[str, Any] = {"split": source.split, "revision": source.revision}
    if source.name:
        options["name"] = source.name
    if source.data_dir:
        options["data_dir"] = source.data_dir
    if source.trust_remote_code:
        # datasets >= 4 runs no loading scripts and has no such argument; older versions need it to run one.
        if "trust_remote_code" in inspect.signature(datasets.load_dataset).parameters:
            options["trust_remote_code"] = True
        else:
            logger.warning(
                "%s: trust_remote_code is set, but datasets %s runs no loading scripts",
                source.location,
                datasets.__version__,
            )
    logger.info("loading %s from the Hub", source.describe())
    try:
        dataset = datasets.load_dataset(source.location, **options)
    except Exception as error:  # network, missing split, bad revision: all become one line naming the source
        first_line = (str(error).strip().splitlines() or [""])[0]
        reason = f"{type(error).__name__}: {one_line(first_line, 200)}"
        raise TaskDataError(f"{source.describe()}: cannot load ({reason})") from None
    shown = f"{source.location}[{source.split}]"
    return (SourceRow(shown, index, dict(data)) for index, data in enumerate(dataset))


def _require_object(data: Any, where: str, index: int) -> dict:
    if not isinstance(data, dict):
        raise row_error(where, index, f"expected a JSON object, got {type(data).__name__}")
    return data


# ---------------------------------------------------------------------------------------------------------
# Checking configs
# ---------------------------------------------------------------------------------------------------------


def require_limits(config: Any, names: tuple[str, ...] = LIMIT_FIELDS) -> None:
    for name in names:
        value = getattr(config, name)
        require(value >= 1, name, f"must be >= 1, got {value}")


def require_text_options(config: Any, names: tuple[str, ...]) -> None:
    for name in names:
        require(bool(getattr(config, name).strip()), name, "must not be empty")


def require_distinct_splits(config: Any, train_key: str, heldout_key: str) -> None:
    train, heldout = getattr(config, train_key), getattr(config, heldout_key)
    require(heldout != train, heldout_key, f"must differ from {train_key} ('{train}')")


# ---------------------------------------------------------------------------------------------------------
# Checking fields
# ---------------------------------------------------------------------------------------------------------


def column_value(row: SourceRow, column: str) -> Any:
    if column not in row.data:
        raise row_error(row.where, row.index, f"missing column '{column}'")
    return row.data[column]


def text_field(row: SourceRow, column: str) -> str:
    """A non-empty string column."""
    value = column_value(row, column)
    if not isinstance(value, str):
        raise row_error(row.where, row.index, f"column '{column}' must be a string, got {type(value).__name__}")
    if not value.strip():
        raise row_error(row.where, row.index, f"column '{column}' is empty")
    return value


def label_field(row: SourceRow, column: str, allowed: tuple[int, ...]) -> int:
    """An integer class label among `allowed` (bool is refused: True is not a label id)."""
    value = column_value(row, column)
    if isinstance(value, bool) or not isinstance(value, int) or value not in allowed:
        raise row_error(row.where, row.index, f"column '{column}' must be one of {list(allowed)}, got {value!r}")
    return value


def number_field(row: SourceRow, column: str) -> float:
    value = column_value(row, column)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise row_error(row.where, row.index, f"column '{column}' must be a number, got {type(value).__name__}")
    return float(value)


def messages_field(row: SourceRow, column: str) -> list[dict]:
    """A non-empty list of {"role", "content"} messages with known roles and non-empty text."""
    value = column_value(row, column)
    if not isinstance(value, list) or not value:
        raise row_error(row.where, row.index, f"column '{column}' must be a non-empty list of messages")
    messages = []
    for position, message in enumerate(value):
        problem = message_problem(message)
        if problem:
            raise row_error(row.where, row.index, f"column '{column}' message {position}: {problem}")
        messages.append({"role": message["role"], "content": message["content"]})
    return messages


def message_problem(message: Any) -> str | None:
    """What is wrong with one chat message, or None."""
    if not isinstance(message, dict) or "role" not in message or "content" not in message:
        return "must be an object with 'role' and 'content'"
    if message["role"] not in MESSAGE_ROLES:
        return f"unknown role {message['role']!r} (expected one of {', '.join(MESSAGE_ROLES)})"
    if not isinstance(message["content"], str) or not message["content"].strip():
        return "content must be a non-empty string"
    return None


def as_completion(text: str) -> str:
    """The schema's completion form: one leading space, no surrounding whitespace (as harness.rewards)."""
    return f" {text.strip()}"


# ---------------------------------------------------------------------------------------------------------
# Building splits
# ---------------------------------------------------------------------------------------------------------


def take_converted(
    rows: Iterable[SourceRow],
    convert: Callable[[SourceRow], dict | None],
    count: int | None,
    what: str,
    skip_malformed: bool = False,
    wanted: int | None = None,
) -> list[dict]:
    """The first `count` rows (all with None) that `convert` keeps (it returns None to drop a row on purpose).

    A malformed row raises its TaskDataError, or, with `skip_malformed`, is dropped and counted in a
    warning. Fewer than `wanted` rows (default `count`) is a warning, as real split sizes vary between
    revisions; none is an error, since every split feeds a stage.
    """
    converted: list[dict] = []
    skipped: list[TaskDataError] = []
    dropped = 0
    for row in rows:
        if count is not None and len(converted) >= count:
            break
        try:
            item = convert(row)
        except TaskDataError as error:
            if not skip_malformed:
                raise
            skipped.append(error)
            continue
        if item is None:
            dropped += 1
        else:
            converted.append(item)
    if skipped:
        logger.warning("%s: skipped %d malformed rows, the first: %s", what, len(skipped), skipped[0])
    if dropped:
        logger.info("%s: dropped %d rows on purpose (duplicates, filtered or unusable)", what, dropped)
    if not converted:
        raise TaskDataError(f"{what}: no usable rows ({dropped} dropped on purpose, {len(skipped)} malformed skipped)")
    wanted = count if wanted is None else wanted
    if wanted is not None and len(converted) < wanted:
        logger.warning("%s: asked for %d rows, the source gave %d", what, wanted, len(converted))
    return converted


def unseen_prompts(seen: set[str]) -> Callable[[dict | None], dict | None]:
    """A filter for evaluation rows: drop a prompt that training uses or that an earlier eval row has.

    It updates `seen`, so evaluation prompts are also distinct from each other.
    """

    def keep(item: dict | None) -> dict | None:
        if item is None or item["prompt"] in seen:
            return None
        seen.add(item["prompt"])
        return item

    return keep


def training_prompts(*splits: Iterable[dict], extra: Iterable[str] = ()) -> set[str]:
    """Every prompt that a training split uses, so that evaluation can avoid them."""
    prompts = {row["prompt"] for split in splits for row in split}
    prompts.update(extra)
    return prompts


def distinct_prompts(rows: Iterable[dict], count: int) -> list[str]:
    """The first `count` distinct prompts of `rows`, in order."""
    return list(itertools.islice(dict.fromkeys(row["prompt"] for row in rows), count))


def data_fingerprint(rows: Any) -> str:
    """A short sha256 of the rows' canonical JSON: the same rows give the same id on every machine."""
    canonical = json.dumps(rows, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]


def log_split(what: str, source: Source, rows: list) -> None:
    """One line per built split, so that a run's log says exactly which data it trained on."""
    logger.info("%s: %d rows from %s, fingerprint %s", what, len(rows), source.describe(), data_fingerprint(rows))
