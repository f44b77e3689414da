"""Everything a report reads from MLflow besides the cell rows, and where it logs its own files back.

`frame.load_cell_runs` gives one row per cell; a report also needs each cell's per-sample table
(eval/samples.jsonl: bootstraps and win rates), its manifest (versions, commit, data fingerprint), the
training curves (metric histories) and the invocation (parent) runs. All of it comes from the tracking
store, never from run folders, so a copy of the database regenerates the same report (DESIGN §4).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from harness import record
from harness.report.frame import (
    BASELINE_ALGORITHM,
    complete_cells,
    find_experiment,
    kind_filter,
    load_cell_runs,
    open_client,
    search_all_runs,
    split_configurations,
    training_curve_metrics,
)

if TYPE_CHECKING:
    import pandas as pd

logger = logging.getLogger(__name__)

MANIFEST_ARTIFACT = "manifest.json"
REPORT_ARTIFACT_PATH = "report"
# Evaluations at intermediate checkpoints (evaluation.checkpoints) are eval/* history at training steps:
# they turn each cell's point in the reward-versus-KL plot into a curve.
EVAL_CURVE_METRICS = ("eval/kl", "eval/gold_reward", "eval/proxy_reward")
_PROGRESS_BAR_VARIABLE = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"


@dataclass
class SuiteRecords:
    """What MLflow holds about one suite, loaded once per report."""

    suite: str
    # load_cell_runs: one row per cell, every configuration of every algorithm
    cells: "pd.DataFrame"
    # run_id -> the cell's eval/samples.jsonl as a frame, for every complete cell whose artifact is readable
    samples: dict
    # run_id -> the cell's manifest.json, for the complete cells of the current configurations
    manifests: dict
    # run_id, metric, step, value: the training curves (frame.training_curve_metrics of its declared curves) and the
    # EVAL_CURVE_METRICS of each complete cell of the current configurations
    histories: "pd.DataFrame"
    # run_id, start_time of every `harness run` invocation (parent run), oldest first
    invocations: "pd.DataFrame"

    @property
    def newest_invocation(self) -> str | None:
        return None if self.invocations.empty else str(self.invocations["run_id"].iloc[-1])


def load_suite_records(tracking_uri: str, suite: str) -> SuiteRecords:
    """Cells, per-sample tables, manifests, histories and invocations of `suite`.

    Raises frame.ReportError when the suite has no experiment or no finished cells.
    """
    cells = load_cell_runs(tracking_uri, suite)
    client = open_client(tracking_uri)
    current, _ = split_configurations(cells)
    current_complete = complete_cells(current)
    trained = current_complete[current_complete["arm"] != BASELINE_ALGORITHM]
    with quiet_downloads():
        samples = _load_all_samples(client, complete_cells(cells)["run_id"])
        manifests = _load_manifests(client, current_complete["run_id"])
    return SuiteRecords(
        suite=suite,
        cells=cells,
        samples=samples,
        manifests=manifests,
        histories=load_histories(client, trained["run_id"], trained["curves"]),
        invocations=load_invocations(client, suite, tracking_uri),
    )


@contextlib.contextmanager
def quiet_downloads():
    """No MLflow progress bar per artifact: a report downloads two per cell, and the library never prints.

    A user who set the variable keeps their choice.
    """
    if _PROGRESS_BAR_VARIABLE in os.environ:
        yield
        return
    os.environ[_PROGRESS_BAR_VARIABLE] = "false"
    try:
        yield
    finally:
        os.environ.pop(_PROGRESS_BAR_VARIABLE, None)


def _download_text(client, run_id: str, artifact_path: str) -> str | None:
    """The artifact's text, or None (with a warning) when the run does not hold it."""
    from mlflow.exceptions import MlflowException

    with tempfile.TemporaryDirectory(prefix="harness-report-") as scratch:
        try:
            local_path = client.download_artifacts(run_id, artifact_path, dst_path=scratch)
            return Path(local_path).read_text(encoding="utf-8")
        except (MlflowException, OSError) as error:
            first_line = str(error).splitlines()[0] if str(error) else type(error).__name__
            logger.warning("run %s has no readable %s: %s", run_id, artifact_path, first_line)
            return None


def samples_from_text(text: str) -> "pd.DataFrame":
    """eval/samples.jsonl as a frame, one row per completion; an empty frame for an empty file."""
    import pandas as pd

    rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    return pd.DataFrame(rows)


def _load_all_samples(client, run_ids) -> dict:
    samples = {}
    for run_id in run_ids:
        text = _download_text(client, run_id, record.SAMPLES_ARTIFACT)
        if text is not None:
            samples[run_id] = samples_from_text(text)
    return samples


def _load_manifests(client, run_ids) -> dict:
    manifests = {}
    for run_id in run_ids:
        text = _download_text(client, run_id, MANIFEST_ARTIFACT)
        if text is None:
            continue
        try:
            manifests[run_id] = json.loads(text)
        except json.JSONDecodeError:
            logger.warning("run %s: %s is not JSON; its versions are left out", run_id, MANIFEST_ARTIFACT)
    return manifests


def load_histories(client, run_ids, curves) -> "pd.DataFrame":
    """Every logged step of each run's training curves (the shared ones and those its algorithm declared on the
    run, its "curves" column: `frame.training_curve_metrics`) and of EVAL_CURVE_METRICS: run_id, metric, step,
    value. A metric a run never logged simply has no rows.
    """
    import pandas as pd

    rows = []
    for run_id, declared in zip(run_ids, curves):
        for metric in training_curve_metrics(declared) + EVAL_CURVE_METRICS:
            for point in client.get_metric_history(run_id, metric):
                rows.append({"run_id": run_id, "metric": metric, "step": int(point.step), "value": float(point.value)})
    frame = pd.DataFrame(rows, columns=["run_id", "metric", "step", "value"])
    # A resumed run can log a step twice; the last write is the one that continued.
    frame = frame.drop_duplicates(["run_id", "metric", "step"], keep="last")
    return frame.sort_values(["run_id", "metric", "step"], kind="mergesort").reset_index(drop=True)


def load_invocations(client, suite: str, tracking_uri: str) -> "pd.DataFrame":
    """The parent run of every `harness run` of the suite, oldest first."""
    import pandas as pd

    experiment = find_experiment(client, suite, tracking_uri)
    runs = search_all_runs(client, experiment.experiment_id, kind_filter(record.KIND_INVOCATION))
    rows = [
        {"run_id": run.info.run_id, "start_time": pd.Timestamp(run.info.start_time, unit="ms", tz="UTC")}
        for run in runs
    ]
    frame = pd.DataFrame(rows, columns=["run_id", "start_time"])
    return frame.sort_values(["start_time", "run_id"], kind="mergesort").reset_index(drop=True)


def log_report_files(tracking_uri: str, run_id: str | None, paths: list[Path]) -> None:
    """Log the report and its plots under report/ on the newest invocation run, so MLflow holds them too.

    The files on disk are the report's main product; a store that refuses the upload costs a warning,
    not the report.
    """
    from mlflow.exceptions import MlflowException

    if run_id is None:
        logger.warning("no invocation run in the store: the report's files are not logged to MLflow")
        return
    client = open_client(tracking_uri)
    for path in paths:
        try:
            client.log_artifact(run_id, str(path), REPORT_ARTIFACT_PATH)
        except (MlflowException, OSError) as error:
            logger.warning("could not log %s to run %s: %s", path.name, run_id, error)
            return
    logger.info("logged %d report files to run %s under %s/", len(paths), run_id, REPORT_ARTIFACT_PATH)
