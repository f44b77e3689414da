"""MLflow, the system of record: one experiment per suite, a parent run per `harness run`, a child run per cell.

Everything goes through an explicit `MlflowClient` and run ids, never the global active run, so two trainers
can never write into one run and nothing depends on the current directory (ENVIRONMENT.md: MLflow 3.17).

Every name written here (experiment, tags, kinds, statuses) is `harness.record`'s; `experiment_name` is
re-exported for the modules that import it from here.

The client is `harness.tracking_retry.RetryingClient`: a store that cannot be reached when a command starts is
refused at once; once it has answered, a server that stops and comes back (or a SQLite file locked by another
run) is waited for, up to `tracking.retry_seconds`, and then `TrackingError` names the URI in one line.
"""

from __future__ import annotations

import contextlib
import logging
import time
from pathlib import Path

from harness import record
from harness.errors import UserError
from harness.record import experiment_name
from harness.secrets import redact
from harness.tracking_retry import DEFAULT_RETRY_SECONDS, RetryingClient, first_line

__all__ = [
    "PARAM_VALUE_LIMIT",
    "Tracker",
    "TrackingError",
    "artifact_location",
    "default_tracking_uri",
    "experiment_name",
]

logger = logging.getLogger(__name__)

PARAM_VALUE_LIMIT = 6000  # MLflow refuses longer param values (ENVIRONMENT.md)
# A live command refreshes record.TAG_HEARTBEAT on its runs every HEARTBEAT_SECONDS; a RUNNING run whose beat
# comes from another host and is older than STALE_AFTER_SECONDS (by the reader's clock: hosts' clocks must agree
# within about a minute, as NTP keeps them) was left by a process that died, and the next command of its suite
# closes it. A beat from this host is checked exactly: its process is alive or not.
HEARTBEAT_SECONDS = 10.0
METRIC_FLUSH_SECONDS = 5.0  # the longest a logged metric waits in memory (a SIGKILL loses at most that much)
METRICS_PER_BATCH = 1000  # MLflow's limit for one log_batch
STALE_AFTER_SECONDS = 90.0


class TrackingError(UserError, RuntimeError):
    """The tracking store cannot be reached or written; the message names the URI."""


def default_tracking_uri(output_dir: Path) -> str:
    return f"sqlite:///{(output_dir / 'mlflow.db').resolve()}"


def artifact_location(uri: str, suite: str) -> str | None:
    """Beside a SQLite store, an absolute folder, so artifacts never land relative to the current directory;
    a tracking server decides for itself (None)."""
    if not uri.startswith("sqlite:///"):
        return None
    database = Path(uri[len("sqlite:///") :])
    return (database.parent / "artifacts" / suite).resolve().as_uri()


class Tracker:
    def __init__(self, uri: str, suite: str, retry_seconds: float = DEFAULT_RETRY_SECONDS):
        import os

        # An unreachable tracking server must be refused in seconds, not after MLflow's minutes of retries; an
        # outage after it has answered is the RetryingClient's to wait out.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")

        self.uri = uri
        self._pending: dict[str, list] = {}  # run id -> metrics not yet written (log_metrics)
        self._flushed_at = time.monotonic()
        try:
            # Inside the try: creating a SQLite store's tables can fail too, and is reported like any other failure.
            self.client = RetryingClient(uri, retry_seconds)
            found = self.client.get_experiment_by_name(experiment_name(suite))
            self.experiment_id = (
                found.experiment_id
                if found
                else self.client.create_experiment(
                    experiment_name(suite),
                    artifact_location=artifact_location(uri, suite),
                    # Model training, not a GenAI app: the kind MLflow's UI selector writes (see record).
                    tags={record.EXPERIMENT_KIND_TAG: record.EXPERIMENT_KIND_TRAINING},
                )
            )
        except TrackingError:  # the store answered, then stayed away for the whole window: already one line
            raise
        except Exception as error:  # any store failure: say which URI, in one line
            raise TrackingError(
                f"cannot use MLflow tracking URI '{redact(uri)}': {redact(first_line(error))}"
            ) from None

    def start_invocation(self, suite: str, tags: dict[str, str]) -> str:
        run = self.client.create_run(
            self.experiment_id,
            run_name=f"{suite}-invocation",
            tags={record.TAG_KIND: record.KIND_INVOCATION, record.TAG_SUITE: suite, **_alive_tags(), **tags},
        )
        return run.info.run_id

    def start_cell(self, parent_run_id: str, name: str, tags: dict[str, str]) -> str:
        run = self.client.create_run(
            self.experiment_id,
            run_name=name,
            tags={
                record.TAG_KIND: record.KIND_CELL,
                record.TAG_CELL: name,
                record.PARENT_RUN_TAG: parent_run_id,
                **_alive_tags(),
                **tags,
            },
        )
        return run.info.run_id

    def resumable_cell(self, run_id: str | None) -> bool:
        """An earlier, unfinished child run of this cell that can be continued instead of duplicated."""
        if not run_id:
            return False
        try:
            run = self.client.get_run(run_id)
        except TrackingError:  # the store is away: a new run now would duplicate this one once it is back
            raise
        except Exception:
            return False
        return run.info.experiment_id == self.experiment_id and run.info.lifecycle_stage == "active"

    def kill_stale_runs(self, suite: str) -> list[str]:
        """Mark KILLED every run of this suite still RUNNING whose writer is gone: called while holding the
        suite's lock, so they belong to processes that died without closing them (SIGKILL, a crash of the
        machine). A run another command still writes (the same suite in another output_dir, on this host or
        any other) has a fresh heartbeat, or its invocation has, and is left alone."""
        running = self.client.search_runs(
            [self.experiment_id],
            filter_string=f"attributes.status = 'RUNNING' and tags.`{record.TAG_SUITE}` = '{suite}'",
        )
        beats = {run.info.run_id: run.data.tags.get(record.TAG_HEARTBEAT) for run in running}  # invocations' too
        stale = [run for run in running if not _alive(run, beats)]
        for run in stale:
            if run.data.tags.get(record.TAG_KIND) == record.KIND_CELL:
                self.client.set_tag(run.info.run_id, record.TAG_STATUS, record.STATUS_KILLED)
            self.client.set_terminated(run.info.run_id, status="KILLED")
        return [run.info.run_id for run in stale]

    def reopen(self, run_id: str) -> None:
        self.client.update_run(run_id, status="RUNNING")
        self.set_tags(run_id, _alive_tags())

    @contextlib.contextmanager
    def heartbeat(self, run_id: str, cell_runs=lambda: []):
        """While the block runs, refresh the heartbeat of the invocation's run and of its cells' runs
        (`cell_runs()`: their ids as the cell folders hold them now; a stage process may have opened one since
        the last beat) every HEARTBEAT_SECONDS from a background thread, so a command on any host can tell that
        they are live. A beat is one attempt: during an outage it is skipped (a retrying beat would compete with
        the run's own calls for the retry window)."""
        import threading

        stopped = threading.Event()

        def beat() -> None:
            while not stopped.wait(HEARTBEAT_SECONDS):
                try:
                    for beating in [run_id, *cell_runs()]:
                        self.client.raw.set_tag(beating, record.TAG_HEARTBEAT, _beat())
                except Exception as error:  # the store is away: the next beat tries again
                    logger.debug("heartbeat of MLflow run %s not sent: %s", run_id, error)

        thread = threading.Thread(target=beat, name=f"heartbeat-{run_id}", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stopped.set()
            thread.join(timeout=HEARTBEAT_SECONDS)

    def log_params(self, run_id: str, params: dict) -> None:
        from mlflow.entities import Param

        existing = self.client.get_run(run_id).data.params
        fresh = [
            Param(key, _param_value(redact(value)))  # a pasted key or a URI's password is never stored
            for key, value in params.items()
            if key not in existing  # params are write-once; a resumed run already has them
        ]
        for start in range(0, len(fresh), 100):
            self.client.log_batch(run_id, params=fresh[start : start + 100])

    def log_metrics(self, run_id: str, metrics: dict[str, float], step: int = 0) -> None:
        """Queued, and written in one batch per run at most every METRIC_FLUSH_SECONDS, at `flush` (a stage's end,
        a resume checkpoint) and at `finish`: a write to a SQLite store is a transaction of about 10 ms, which
        per training step was 7% of a tiny run."""
        import math

        from mlflow.entities import Metric

        timestamp = int(time.time() * 1000)
        self._pending.setdefault(run_id, []).extend(
            Metric(key, float(value), timestamp, step) for key, value in metrics.items() if math.isfinite(float(value))
        )
        if time.monotonic() - self._flushed_at >= METRIC_FLUSH_SECONDS:
            self.flush()

    def flush(self) -> None:
        """Write every queued metric."""
        while self._pending:
            run_id, batch = next(iter(self._pending.items()))
            for start in range(0, len(batch), METRICS_PER_BATCH):
                self.client.log_batch(run_id, metrics=batch[start : start + METRICS_PER_BATCH])
            del self._pending[run_id]  # after it is written: a store that failed keeps it queued for the retry
        self._flushed_at = time.monotonic()

    def set_tags(self, run_id: str, tags: dict[str, str]) -> None:
        for key, value in tags.items():
            self.client.set_tag(run_id, key, redact(str(value)))  # failure reasons quote URIs and settings

    def log_artifact(self, run_id: str, path: Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(run_id, str(path), artifact_path)

    def finish(self, run_id: str, status: str = "FINISHED") -> None:
        self.flush()
        self.client.set_terminated(run_id, status=status)


def _owner() -> str:
    import os
    import socket

    return f"{socket.gethostname()}:{os.getpid()}"


def _beat() -> str:
    """A heartbeat's value: when (seconds since the epoch) and who (host:pid) beat."""
    import time

    return f"{int(time.time())} {_owner()}"  # floored: a beat rounded up would lie half a second in the future


def _alive_tags() -> dict[str, str]:
    """What a run's writer says about itself: who it is (host:pid) and that it is alive now."""
    return {record.TAG_OWNER: _owner(), record.TAG_HEARTBEAT: _beat()}


def _alive(run, beats: dict[str, str | None]) -> bool:
    """Whether another live command writes `run`, judged by its heartbeat or, while that invocation is RUNNING,
    its invocation's (the invocation beats for its cells, whose stage processes come and go). A run from before
    heartbeats falls back to its owner's process on this host."""
    found = [
        beat for beat in (beats.get(run.info.run_id), beats.get(run.data.tags.get(record.PARENT_RUN_TAG, ""))) if beat
    ]
    if not found:
        return _written_by_another_live_process(run.data.tags.get(record.TAG_OWNER))
    return any(_beater_alive(beat) for beat in found)


def _beater_alive(beat: str) -> bool:
    """A beater on this host is alive when its process is (exact, no clock involved); one on another host when
    its beat is younger than STALE_AFTER_SECONDS."""
    import socket
    import time

    when, _, beater = beat.partition(" ")
    if beater.rpartition(":")[0] == socket.gethostname():
        return _written_by_another_live_process(beater)
    try:
        return time.time() - float(when) < STALE_AFTER_SECONDS
    except ValueError:  # not a beat this version wrote: nothing says it is alive
        return False


def _written_by_another_live_process(owner: str | None) -> bool:
    """Whether `owner` (host:pid) is another process of this machine that is still running a harness command."""
    import os
    import socket

    host, _, pid = (owner or "").rpartition(":")
    if host != socket.gethostname() or not pid.isdigit() or int(pid) == os.getpid():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    try:  # a recycled pid is some other program: its runs are stale
        return b"harness" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True


def _param_value(value) -> str:
    text = str(value)
    return text if len(text) <= PARAM_VALUE_LIMIT else text[: PARAM_VALUE_LIMIT - 3] + "..."
