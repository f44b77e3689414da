"""The throughput table: measured seconds per token and start costs, keyed by device, model and precision.

Its one home is `<output_dir>/throughput.json`, beside the MLflow store and the suites' run folders: the
measurements it is fitted to (each suite's timings.json and run folders) live there, the machine that fills an
output folder is the machine that runs it, every suite of the folder shares the entries of a model it shares,
and a test's or a scratch run's output folder keeps its own (nothing is written to the user's home).

    {"format": 1,
     "entries": {"cpu:2t|build:gpt2:2x64:ctx64|fp32": {
         "seconds_per_trained_token": 2.1e-06,    # forward + backward + optimizer step
         "seconds_per_generated_token": 3.0e-05,  # one sampled token slot
         "start_seconds": {"sft": 1.2, ..., "run": 4.0, "stage": 0.6},
         "scale": {"train": 1.4, ...},             # measured / counted, per stage kind, from a real run
         "source": "harness calibrate suite=tiny", "measured_at": "2026-12-05T03:00:00"}},
     "lengths": {"<task fingerprint>": {"prompt": 5.0, "completion": 19.7}}}

A device is "cpu:<threads>t" (the threads one stage gets) or "cuda:<GPU model>"; a model is the built shape
("build:gpt2:2x64:ctx64") or `model.name_or_path`, and a GPU measurement may also stand for every model of its
parameter count ("params:1e+09", half-decade buckets).
"""

from __future__ import annotations

import datetime
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from harness.errors import ConfigError, shown

TABLE_FILE = "throughput.json"
TABLE_FORMAT = 1
# start_seconds keys besides the stage kinds: the invocation's own cost (imports, tracking store, lock,
# report's absence excluded) and what every stage costs outside its timed body (reading its inputs, its
# MLflow run, handing it to a worker).
RUN_START = "run"
STAGE_OVERHEAD = "stage"


class ThroughputTableError(ConfigError):
    """A throughput table that cannot be read as one: one line naming the file and what is wrong."""


@dataclass
class Rates:
    """One table entry: what a stage of this device, model and precision costs."""

    seconds_per_trained_token: float
    seconds_per_generated_token: float
    start_seconds: dict[str, float] = field(default_factory=dict)
    scale: dict[str, float] = field(default_factory=dict)
    source: str = ""
    measured_at: str = ""

    def to_dict(self) -> dict:
        return {
            "seconds_per_trained_token": self.seconds_per_trained_token,
            "seconds_per_generated_token": self.seconds_per_generated_token,
            "start_seconds": dict(self.start_seconds),
            "scale": dict(self.scale),
            "source": self.source,
            "measured_at": self.measured_at,
        }


@dataclass
class Table:
    path: Path
    entries: dict[str, Rates] = field(default_factory=dict)
    lengths: dict[str, dict[str, float]] = field(default_factory=dict)


def table_path(output_dir: str | Path) -> Path:
    return Path(output_dir).resolve() / TABLE_FILE


def entry_key(device: str, model: str, precision: str) -> str:
    return f"{device}|{model}|{precision}"


def parameter_bucket(parameters: int) -> str:
    """Half-decade buckets: models within a factor of about 1.8 of each other share a GPU entry."""
    return f"params:{10 ** (round(2 * math.log10(max(1, parameters))) / 2):.0e}"


def model_key(model_config) -> str:
    if model_config.source == "build":
        m = model_config
        return f"build:{m.architecture}:{m.n_layer}x{m.n_embd}:ctx{m.max_positions}"
    return model_config.name_or_path


def cpu_device(threads: int) -> str:
    return f"cpu:{threads}t"


def cuda_device(name: str) -> str:
    """The device of a GPU by its model name (torch.cuda.get_device_name(), or the driver's "Model:" line)."""
    return f"cuda:{name.strip()}"


def visible_gpu_model() -> str:
    """The first GPU's model as the NVIDIA driver names it, without torch; "" when there is none."""
    driver = Path("/proc/driver/nvidia/gpus")
    if not driver.is_dir():
        return ""
    for gpu in sorted(driver.iterdir()):
        for line in (gpu / "information").read_text(errors="replace").splitlines():
            if line.startswith("Model:"):
                return line.split(":", 1)[1].strip()
    return ""


def read_table(path: Path) -> Table:
    """The table at `path` (an empty one when there is no file yet); a malformed one is refused in one line."""
    if not path.exists():
        return Table(path)

    def refuse(reason: str):
        raise ThroughputTableError(
            f"throughput table '{shown(path, 200)}' {reason}; fix it or delete it and run `harness calibrate`"
        )

    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as error:
        refuse(f"cannot be read ({error.__class__.__name__})")
    except ValueError as error:  # json.JSONDecodeError, and the NaN/Infinity constants refused below
        refuse(f"is not JSON ({shown(error, 80)})")
    if not isinstance(data, dict) or data.get("format") != TABLE_FORMAT or not isinstance(data.get("entries"), dict):
        refuse(f"is not a format-{TABLE_FORMAT} table (an object with 'format' and 'entries')")
    table = Table(path)
    for key, entry in data["entries"].items():
        if not isinstance(entry, dict):
            refuse(f"entry '{shown(key)}' is not an object")
        numbers = {name: entry.get(name) for name in ("seconds_per_trained_token", "seconds_per_generated_token")}
        for name, value in numbers.items():
            if not _finite(value) or value <= 0:
                refuse(f"entry '{shown(key)}' has {name} {shown(value)}: must be a finite number > 0")
        maps = {}
        for name in ("start_seconds", "scale"):
            values = entry.get(name, {})
            if not isinstance(values, dict):
                refuse(f"entry '{shown(key)}' has {name} that is not an object")
            for kind, value in values.items():
                if not _finite(value) or value < 0:
                    refuse(
                        f"entry '{shown(key)}' has {name}.{shown(kind)} {shown(value)}: must be a finite number >= 0"
                    )
            maps[name] = {kind: float(value) for kind, value in values.items()}
        table.entries[key] = Rates(
            float(numbers["seconds_per_trained_token"]),
            float(numbers["seconds_per_generated_token"]),
            maps["start_seconds"],
            maps["scale"],
            str(entry.get("source", "")),
            str(entry.get("measured_at", "")),
        )
    for task_hash, lengths in data.get("lengths", {}).items():
        if not isinstance(lengths, dict) or not all(
            _finite(lengths.get(name)) and lengths[name] > 0 for name in ("prompt", "completion")
        ):
            refuse(f"lengths of task '{shown(task_hash)}' must be finite numbers > 0 for prompt and completion")
        table.lengths[task_hash] = {"prompt": float(lengths["prompt"]), "completion": float(lengths["completion"])}
    return table


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def write_table(table: Table) -> None:
    """Replace the file at once (a reader never sees half of it)."""
    data = {
        "format": TABLE_FORMAT,
        "entries": {key: rates.to_dict() for key, rates in sorted(table.entries.items())},
        "lengths": table.lengths,
    }
    table.path.parent.mkdir(parents=True, exist_ok=True)
    partial = table.path.with_name(f".{table.path.name}.{os.getpid()}")
    partial.write_text(json.dumps(data, indent=1, allow_nan=False) + "\n")
    os.replace(partial, table.path)


def lookup(table: Table, device: str, model: str, precision: str, parameters: int | None = None) -> Rates | None:
    """The entry of this model by name, else of its parameter-count bucket, else None (uncalibrated)."""
    rates = table.entries.get(entry_key(device, model, precision))
    if rates is None and parameters:
        rates = table.entries.get(entry_key(device, parameter_bucket(parameters), precision))
    return rates


def record_throughput(
    output_dir: str | Path,
    device: str,
    model: str,
    precision: str,
    seconds_per_trained_token: float,
    seconds_per_generated_token: float,
    start_seconds: dict[str, float] | None = None,
    parameters: int | None = None,
    source: str = "",
) -> Path:
    """Add or replace one measurement in `<output_dir>/throughput.json` (benchmarks/gpu_check.py, harness
    calibrate); with `parameters`, the same rates also stand for other models of that size. Returns the file."""
    path = table_path(output_dir)
    table = read_table(path)
    rates = Rates(
        seconds_per_trained_token,
        seconds_per_generated_token,
        dict(start_seconds or {}),
        {},
        source,
        datetime.datetime.now().isoformat(timespec="seconds"),
    )
    _check_rates(rates, path)
    table.entries[entry_key(device, model, precision)] = rates
    if parameters:
        table.entries[entry_key(device, parameter_bucket(parameters), precision)] = rates
    write_table(table)
    return path


def _check_rates(rates: Rates, path: Path) -> None:
    """What read_table would refuse is never written."""
    values = [rates.seconds_per_trained_token, rates.seconds_per_generated_token]
    if not all(_finite(v) and v > 0 for v in values) or not all(
        _finite(v) and v >= 0 for v in [*rates.start_seconds.values(), *rates.scale.values()]
    ):
        raise ThroughputTableError(f"refusing to write a non-finite or negative rate to '{shown(path, 200)}'")
